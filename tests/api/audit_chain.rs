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

/// Runs `sql` as the owner with the append-only triggers off: what someone with database
/// access could do behind the service's back.
async fn tamper(app: &TestApp, sql: &str) {
    let mut tx = app.owner_pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER USER")
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

#[tokio::test]
async fn audited_writes_of_different_tenants_never_wait_for_each_other() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (
        app.create_tenant("pro").await,
        app.create_tenant("pro").await,
    );
    let entry = |tenant: saas_core::TenantId| {
        tenancy::audit::AuditEntry::new(
            Some(tenant),
            tenancy::audit::Actor::System("test"),
            "test.audited",
        )
    };
    // Alice's transaction has audited and is still open (a slow provisioning, say).
    let mut slow = app.db.tenant_tx(alice.id).await.unwrap();
    tenancy::audit::record(&mut slow, &entry(alice.id))
        .await
        .unwrap();
    // Bob's audited write goes through meanwhile, with no lock to wait for.
    let mut quick = app.db.tenant_tx(bob.id).await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '500ms'")
        .execute(&mut *quick)
        .await
        .unwrap();
    tenancy::audit::record(&mut quick, &entry(bob.id))
        .await
        .expect("no wait behind another tenant's audit entry");
    quick.commit().await.unwrap();
    slow.commit().await.unwrap();

    // Both end up in one valid chain, in the order they were appended.
    let report = verify(&app).await;
    assert_eq!(report["valid"], true, "{report}");
    let page: Value = app
        .get("/v1/admin/audit")
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenants: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "test.audited")
        .map(|e| e["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, [alice.id.to_string(), bob.id.to_string()]);
}

#[tokio::test]
async fn sealing_sets_the_chain_fields_and_nothing_else() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("pro").await;
    let response = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({"name": "k"}))
        .await;
    assert_eq!(response.status(), 201);
    // Waiting to be sealed, the entry's content still cannot change, even for the
    // table's owner (whom row-level security binds, so it acts as the system here).
    let owner_pool = &app.owner_pool;
    let owner_update = |sql: &'static str| async move {
        let mut tx = owner_pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.system', 'on', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut *tx).await
    };
    let changed = owner_update(
        "UPDATE audit_log SET reason = 'rewritten', chain_seq = 99, prev_hash = '\\x00', \
                hash = '\\x00' WHERE hash IS NULL",
    )
    .await;
    assert!(
        changed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("append-only")),
        "{changed:?}"
    );
    // Sealed, it cannot change at all.
    assert_eq!(verify(&app).await["entries"], 1);
    let changed = owner_update("UPDATE audit_log SET hash = '\\x00'").await;
    assert!(
        changed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("append-only")),
        "{changed:?}"
    );
}
