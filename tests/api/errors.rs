use integration_tests::{TestApp, error_code};

#[tokio::test]
async fn unknown_routes_get_the_standard_error_shape() {
    let app = TestApp::spawn().await;
    let response = app.get("/no/such/route").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn wrong_methods_get_the_standard_error_shape() {
    let app = TestApp::spawn().await;
    let response = app.delete("/v1/plans").send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(error_code(response).await, "method_not_allowed");
}

#[tokio::test]
async fn a_sane_client_request_id_is_kept_and_a_hostile_one_replaced() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/nope")
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-id-42");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "client-id-42");

    let hostile = "x".repeat(500);
    let response = app
        .get("/nope")
        .header("x-request-id", &hostile)
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_") && id != hostile);
}

#[tokio::test]
async fn bodies_above_the_limit_get_413_and_change_nothing() {
    let app = TestApp::spawn_with(|config| config.http.body_limit_bytes = 1024).await;
    let tenant = app.create_tenant("starter").await;
    let big = serde_json::json!({ "name": "x".repeat(4096) }).to_string();

    // Declared length above the limit.
    let response = app
        .post("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");

    // No declared length: the limit must hold while streaming too.
    let stream = futures_stream(big.into_bytes());
    let response = app
        .post("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");

    let keys: serde_json::Value = app
        .get("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys["api_keys"].as_array().unwrap().len(),
        1,
        "no key was created"
    );
}

/// A body sent in chunks without a Content-Length.
fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(256).map(|chunk| Ok(chunk.to_vec())).collect();
    futures_util::stream::iter(chunks)
}

#[tokio::test]
async fn malformed_json_gets_400_and_a_missing_content_type_415() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let response = app
        .post("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "malformed_json");

    let response = app
        .post("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .header("content-type", "application/json")
        .body(r#"{"name": 12}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_body");

    let response = app
        .post("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .body(r#"{"name": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(error_code(response).await, "unsupported_media_type");
}

#[tokio::test]
async fn a_postgres_shutting_down_is_a_503_to_retry_not_a_500() {
    use axum::response::IntoResponse;

    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("free").await;
    // The connection is terminated as a restarting server terminates it: the server
    // answers the statement with SQLSTATE 57P01 (admin_shutdown) and hangs up.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let error = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    let sqlstate = error
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned());
    assert_eq!(sqlstate.as_deref(), Some("57P01"), "{error:?}");
    let store = tenancy::StoreError::from(error);
    assert!(
        matches!(store, tenancy::StoreError::Unavailable(_)),
        "{store:?}"
    );
    let response = gateway::error::ApiError::from(store).into_response();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}
