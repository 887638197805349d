use integration_tests::{TestApp, error_code};
use serde_json::{Value, json};

async fn list_keys(app: &TestApp, api_key: &str) -> Vec<Value> {
    let body: Value = app
        .get("/v1/api-keys")
        .bearer_auth(api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["api_keys"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_new_key_shows_its_secret_once_and_works_at_once() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;

    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/api-keys",
            &json!({"name": "ci deploys"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["name"], "ci deploys");

    // The new key authenticates as the same tenant.
    let listed = list_keys(&app, secret).await;
    assert_eq!(listed.len(), 2);
    // Listing never shows a secret.
    for key in &listed {
        assert!(key.get("secret").is_none());
        assert!(!key.to_string().contains(secret));
    }

    // Only a hash is stored: nothing in the row contains the secret.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT row_to_json(k)::text, secret_hash FROM api_keys k")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    for (row, hash) in rows {
        assert!(!row.contains(&secret[10..]), "the secret is stored: {row}");
        assert_eq!(hash.len(), 32);
    }
}

#[tokio::test]
async fn invalid_names_are_refused_and_nothing_is_created() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    for name in [
        json!(""),
        json!("   "),
        json!("x".repeat(101)),
        json!("bell\u{7}"),
    ] {
        let response = app
            .post_as(&tenant.api_key, "/v1/api-keys", &json!({ "name": name }))
            .await;
        assert_eq!(response.status(), 422, "{name}");
        assert_eq!(error_code(response).await, "invalid_name");
    }
    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/api-keys",
            &json!({ "name": "ok", "tenant_id": "ten_00000000000000000000000000000000" }),
        )
        .await;
    assert_eq!(
        response.status(),
        400,
        "unknown fields are refused, a tenant id above all"
    );
    assert_eq!(list_keys(&app, &tenant.api_key).await.len(), 1);
}

#[tokio::test]
async fn a_tenant_cannot_see_or_revoke_another_tenants_keys() {
    let app = TestApp::spawn().await;
    let alice = app.create_tenant("starter").await;
    let bob = app.create_tenant("starter").await;

    let response = app
        .delete(&format!("/v1/api-keys/{}", bob.key_id))
        .bearer_auth(&alice.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");

    // Bob's key still works, and each sees only its own key.
    let bobs = list_keys(&app, &bob.api_key).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["id"], bob.key_id.to_string());
    let alices = list_keys(&app, &alice.api_key).await;
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0]["id"], alice.key_id.to_string());
}

#[tokio::test]
async fn revoking_is_idempotent_and_audited() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let second: Value = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/api-keys/{}", second["id"].as_str().unwrap());
    for _ in 0..2 {
        let response = app
            .delete(&path)
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(body["revoked_at"].is_string());
    }
    let response = app
        .get("/v1/api-keys")
        .bearer_auth(second["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant.id.as_uuid())
            .fetch_all(&app.owner_pool)
            .await
            .unwrap();
    // The owner role is bound by row-level security too, and set no tenant: it sees none.
    assert!(
        actions.is_empty(),
        "forced RLS applies to the owner as well"
    );

    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    // The second revocation changed nothing, so it recorded nothing.
    assert_eq!(actions, ["api_key.created", "api_key.revoked"]);
}

#[tokio::test]
async fn a_tenant_has_at_most_twenty_active_keys() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let mut last = Value::Null;
    for _ in 1..20 {
        let response = app
            .post_as(&tenant.api_key, "/v1/api-keys", &json!({}))
            .await;
        assert_eq!(response.status(), 201);
        last = response.json().await.unwrap();
    }
    let response = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({}))
        .await;
    assert_eq!(response.status(), 409);
    assert_eq!(error_code(response).await, "too_many_api_keys");
    assert_eq!(list_keys(&app, &tenant.api_key).await.len(), 20);

    // Revoking one makes room for one.
    let path = format!("/v1/api-keys/{}", last["id"].as_str().unwrap());
    let response = app
        .delete(&path)
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({}))
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn key_writes_are_rate_limited_per_tenant() {
    let app = TestApp::spawn_with(|config| {
        config.http.sensitive_writes_per_minute = 3.try_into().unwrap()
    })
    .await;
    let (looping, other) = (
        app.create_tenant("starter").await,
        app.create_tenant("starter").await,
    );
    let mut created = Vec::new();
    for _ in 0..3 {
        let response = app
            .post_as(&looping.api_key, "/v1/api-keys", &json!({}))
            .await;
        assert_eq!(response.status(), 201);
        created.push(response.json::<Value>().await.unwrap());
    }
    let response = app
        .post_as(&looping.api_key, "/v1/api-keys", &json!({}))
        .await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "rate_limited");
    let path = format!("/v1/api-keys/{}", created[0]["id"].as_str().unwrap());
    let response = app
        .delete(&path)
        .bearer_auth(&looping.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    // Reads are not limited, and neither is another tenant.
    assert_eq!(list_keys(&app, &looping.api_key).await.len(), 4);
    let response = app
        .post_as(&other.api_key, "/v1/api-keys", &json!({}))
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_key_created_while_an_erasure_commits_does_not_survive_it() {
    let app = TestApp::spawn_with(|config| config.http.key_cache_ttl_ms = 0).await;
    let tenant = app.create_tenant("starter").await;
    // An erasure's transaction, held open at its last statement: the tenant moved to
    // `deleted` and its keys revoked, not yet committed.
    let mut erasure = app.db.tenant_tx(tenant.id).await.unwrap();
    sqlx::query("UPDATE tenants SET state = 'deleted', version = version + 1 WHERE id = $1")
        .bind(tenant.id.as_uuid())
        .execute(&mut *erasure)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL",
    )
    .bind(tenant.id.as_uuid())
    .execute(&mut *erasure)
    .await
    .unwrap();
    let body = json!({});
    let create = app.post_as(&tenant.api_key, "/v1/api-keys", &body);
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        erasure.commit().await.unwrap();
    };
    let (response, ()) = tokio::join!(create, commit);
    assert_eq!(response.status(), 401, "the tenant is gone");
    assert_eq!(error_code(response).await, "invalid_api_key");

    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(live, 0, "no key outlives the erasure");
}
