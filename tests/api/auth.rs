use integration_tests::{OPERATOR_TOKEN, TestApp, error_code};

#[tokio::test]
async fn tenant_routes_refuse_missing_malformed_unknown_and_revoked_keys() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;

    let response = app.get("/v1/api-keys").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "missing_credentials");

    for malformed in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer   ",
        "bearer sk_x",
        "sk_only",
    ] {
        let response = app
            .get("/v1/api-keys")
            .header("authorization", malformed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{malformed}");
        assert_eq!(
            error_code(response).await,
            "malformed_credentials",
            "{malformed}"
        );
    }

    let unknown = format!("sk_{}", "0".repeat(64));
    for key in [unknown.as_str(), "not-a-key", &"sk_x".repeat(100)] {
        let response = app
            .get("/v1/api-keys")
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{key}");
        assert_eq!(error_code(response).await, "invalid_api_key");
    }

    // The key works, then is revoked (through the API, with itself), then no longer works.
    let response = app
        .get("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .delete(&format!("/v1/api-keys/{}", tenant.key_id))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .get("/v1/api-keys")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_api_key");
}

#[tokio::test]
async fn tenant_keys_get_403_on_admin_routes_and_the_operator_token_gets_in() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;

    let path = format!("/v1/admin/tenants/{}", tenant.id);
    for route in ["/v1/admin/tenants", path.as_str()] {
        let response = app
            .get(route)
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{route}");
        assert_eq!(error_code(response).await, "operator_only");

        let response = app
            .get(route)
            .bearer_auth("wrong-operator-token-000000")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{route}");
        assert_eq!(error_code(response).await, "invalid_operator_token");

        let response = app.get(route).send().await.unwrap();
        assert_eq!(response.status(), 401, "{route}");

        let response = app
            .get(route)
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{route}");
    }
}

#[tokio::test]
async fn without_a_configured_operator_token_the_admin_api_refuses_everyone() {
    let app = TestApp::spawn_with(|config| config.operator_token = None).await;
    let response = app
        .get("/v1/admin/tenants")
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_operator_token");
}
