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
    assert_eq!(
        actions,
        ["api_key.created", "api_key.revoked", "api_key.revoked"]
    );
}
