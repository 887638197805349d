use integration_tests::{FaultProxy, OPERATOR_TOKEN, Stack, TestApp, error_code};
use secrecy::{ExposeSecret, SecretString};

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

/// The app's Postgres connection goes through a proxy the test can cut.
async fn app_behind_a_postgres_proxy() -> (TestApp, FaultProxy) {
    let stack = Stack::from_env();
    let proxy = FaultProxy::start(format!("{}:{}", stack.pg_host, stack.pg_port)).await;
    let port = proxy.port;
    let app = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.http.key_cache_ttl_ms = 600_000;
        let direct = config.database.url.expose_secret().to_owned();
        let proxied = direct.replace(&format!(":{}/", stack.pg_port), &format!(":{port}/"));
        assert_ne!(direct, proxied);
        config.database.url = SecretString::from(proxied);
    })
    .await;
    (app, proxy)
}

#[tokio::test]
async fn tokens_not_shaped_like_keys_and_keys_just_found_unknown_cost_no_database_trip() {
    let (app, proxy) = app_behind_a_postgres_proxy().await;
    let unknown = format!("sk_{}", "1".repeat(64));
    let response = app
        .get("/v1/tenant")
        .bearer_auth(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // With Postgres out of reach, only a question the store must answer fails.
    proxy.cut();
    let shapeless = [
        "x".to_owned(),
        format!("sk_{}", "Z".repeat(64)),
        format!("sk_{}", "1".repeat(63)),
        "y".repeat(5000),
    ];
    for token in shapeless.iter().chain([&unknown]) {
        let response = app
            .get("/v1/tenant")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{}", &token[..token.len().min(20)]);
        assert_eq!(error_code(response).await, "invalid_api_key");
    }
    let never_seen = format!("sk_{}", "2".repeat(64));
    let response = app
        .get("/v1/tenant")
        .bearer_auth(&never_seen)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "the store really is out of reach");
    proxy.restore();
}

#[tokio::test]
async fn wrong_operator_tokens_are_limited_per_address_even_a_right_one_after() {
    let app =
        TestApp::spawn_with(|config| config.dashboard.sign_ins_per_minute = 5.try_into().unwrap())
            .await;
    for _ in 0..5 {
        let response = app
            .get("/v1/admin/tenants")
            .bearer_auth("wrong-operator-token-000000")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    // Now refused before comparing: a correct guess cannot be told from a wrong one.
    for token in ["wrong-operator-token-000000", OPERATOR_TOKEN] {
        let response = app
            .get("/v1/admin/tenants")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(error_code(response).await, "rate_limited");
    }
}

#[tokio::test]
async fn an_operator_using_the_right_token_is_never_limited() {
    let app =
        TestApp::spawn_with(|config| config.dashboard.sign_ins_per_minute = 2.try_into().unwrap())
            .await;
    for _ in 0..20 {
        let response = app
            .get("/v1/admin/tenants")
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn a_key_of_an_erased_tenant_opens_nothing_even_if_it_was_never_revoked() {
    let app = TestApp::spawn_with(|config| config.http.key_cache_ttl_ms = 0).await;
    let tenant = app.create_tenant("starter").await;
    let response = app
        .get("/v1/tenant")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // As if the key had slipped past the erasure's revocation.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let moved = sqlx::query("UPDATE tenants SET state = 'deleted' WHERE id = $1")
        .bind(tenant.id.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    tx.commit().await.unwrap();
    let response = app
        .get("/v1/tenant")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_api_key");
}
