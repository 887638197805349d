//! The audit log is a hash chain that operators can verify.

use integration_tests::{OPERATOR_TOKEN, TestApp};
use serde_json::{Value, json};

async fn verify(app: &TestApp) -> Value {
    let response = app
        .get("/v1/admin/audit/verify")
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Runs `sql` as the owner with the append-only trigger off: what someone with database
/// access could do behind the service's back.
async fn tamper(app: &TestApp, sql: &str) {
    let mut tx = app.owner_pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn concurrent_appends_form_one_valid_chain_that_operators_can_read() {
    let app = TestApp::spawn().await;
    let alice = app.create_tenant("pro").await;
    let bob = app.create_tenant("pro").await;
    let creations = (0..20).map(|i| {
        let key = if i % 2 == 0 {
            &alice.api_key
        } else {
            &bob.api_key
        };
        app.post("/v1/api-keys")
            .bearer_auth(key)
            .json(&json!({"name": format!("k{i}")}))
            .send()
    });
    for response in futures_util::future::join_all(creations).await {
        assert_eq!(response.unwrap().status(), 201);
    }
    let report = verify(&app).await;
    assert_eq!(
        report,
        json!({"valid": true, "entries": 20, "first_broken_seq": null})
    );

    let page: Value = app
        .get(&format!("/v1/admin/audit?tenant_id={}", alice.id))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 10);
    assert!(
        entries
            .iter()
            .all(|e| e["tenant_id"] == alice.id.to_string() && e["action"] == "api_key.created")
    );
    assert!(
        entries
            .iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("tenant:key_"))
    );
    // Tenants cannot read it.
    let response = app
        .get("/v1/admin/audit")
        .bearer_auth(&alice.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn a_changed_entry_or_a_removed_tail_is_detected() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    for i in 0..5 {
        let response = app
            .post_as(
                &tenant.api_key,
                "/v1/api-keys",
                &json!({"name": format!("k{i}")}),
            )
            .await;
        assert_eq!(response.status(), 201);
    }
    assert_eq!(verify(&app).await["valid"], true);

    tamper(
        &app,
        "UPDATE audit_log SET reason = 'nothing to see' WHERE chain_seq = 3",
    )
    .await;
    let report = verify(&app).await;
    assert_eq!(report["valid"], false);
    assert_eq!(report["first_broken_seq"], 3);

    tamper(
        &app,
        "UPDATE audit_log SET reason = NULL WHERE chain_seq = 3",
    )
    .await;
    assert_eq!(
        verify(&app).await["valid"],
        true,
        "restoring the content restores the chain"
    );

    tamper(&app, "DELETE FROM audit_log WHERE chain_seq = 5").await;
    let report = verify(&app).await;
    assert_eq!(report["valid"], false);
    assert_eq!(report["first_broken_seq"], 5);
}
