//! GDPR export and erasure, against the real Postgres, ClickHouse and localstripe.

use std::time::{Duration, Instant};

use integration_tests::{TestApp, stripe_get};
use saas_core::TenantId;
use serde_json::{Value, json};

const EVENTS: usize = 50_000;

async fn ingest_many(app: &TestApp, key: &str, prefix: &str, count: usize) {
    for batch in 0..count / 1000 {
        let events: Vec<Value> = (0..1000)
            .map(
                |i| json!({"id": format!("{prefix}-{batch}-{i}"), "metric": "queries", "value": 1}),
            )
            .collect();
        let response = app.ingest(key, Value::Array(events)).await;
        assert_eq!(response.status(), 202);
    }
}

async fn transition_status(app: &TestApp, id: &str) -> String {
    let id: saas_core::TransitionId = id.parse().unwrap();
    let mut tx = app.db.system_tx("test read").await.unwrap();
    sqlx::query_scalar("SELECT status FROM tenant_transitions WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

/// How many rows of any table in the database mention `needle` anywhere.
async fn rows_mentioning(app: &TestApp, needle: &str) -> Vec<(String, i64)> {
    let mut tx = app.db.system_tx("test scan").await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let sql = format!(
            "SELECT count(*) FROM \"{table}\" t WHERE strpos(lower(to_jsonb(t)::text), lower($1)) > 0"
        );
        // Some tables are not readable by the service role; they hold no tenant data.
        let Ok(count) = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .fetch_one(&app.owner_pool)
            .await
        else {
            continue;
        };
        let visible: i64 = if count == 0 {
            // Row-level security hides tenant rows from the owner; ask as the system, in
            // a transaction of its own (a table the service may not read aborts it).
            let mut tx = app.db.system_tx("test scan").await.unwrap();
            let sql = format!(
                "SELECT count(*) FROM \"{table}\" t WHERE strpos(lower(to_jsonb(t)::text), lower($1)) > 0"
            );
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .bind(needle)
                .fetch_one(&mut *tx)
                .await
                .unwrap_or(0)
        } else {
            count
        };
        if visible > 0 {
            found.push((table, visible));
        }
    }
    found
}

#[tokio::test]
async fn export_then_erasure_leaves_nothing_but_the_records() {
    let app = TestApp::spawn().await;
    let tenant = app.sign_up_tenant("pro", Some("pm_card_visa")).await;
    let sentinel = app.create_tenant("pro").await;
    ingest_many(&app, &tenant.api_key, "erase", EVENTS).await;
    ingest_many(&app, &sentinel.api_key, "keep", 1000).await;
    app.drain_relay().await;
    assert_eq!(
        app.clickhouse.event_count(tenant.id).await.unwrap(),
        EVENTS as u64
    );

    // The export, taken before: everything held, including the personal data.
    let export = app.get_json(&tenant.api_key, "/v1/tenant/export").await;
    let email = export["tenant"]["email"].as_str().unwrap().to_owned();
    let company = export["tenant"]["name"].as_str().unwrap().to_owned();
    assert!(email.contains('@'));
    assert_eq!(export["signup"]["email"], email);
    assert_eq!(export["usage_events"].as_array().unwrap().len(), EVENTS);
    assert_eq!(export["api_keys"].as_array().unwrap().len(), 1);
    assert!(export["api_keys"][0].get("secret_hash").is_none());
    assert!(!export["audit_log"].as_array().unwrap().is_empty());
    let export_text = export.to_string();
    assert!(
        !export_text.contains(&sentinel.id.to_string()),
        "another tenant leaked"
    );
    let customer: String = {
        let mut tx = app.db.system_tx("test read").await.unwrap();
        sqlx::query_scalar("SELECT stripe_customer_id FROM tenants WHERE id = $1")
            .bind(tenant.id.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    };
    assert!(!rows_mentioning(&app, &email).await.is_empty());

    let response = app
        .post("/v1/tenant/erasure")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["transition"]["kind"], "erasure");
    assert_eq!(accepted["transition"]["to"], "deleted");
    let id = accepted["transition"]["id"].as_str().unwrap().to_owned();
    // Access ends with the answer.
    let refused = app
        .get("/v1/tenant")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let deadline = Instant::now() + Duration::from_secs(60);
    while transition_status(&app, &id).await != "completed" {
        assert!(Instant::now() < deadline, "erasure did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing of it left: ClickHouse, the ledger, personal data anywhere in Postgres.
    assert_eq!(app.clickhouse.event_count(tenant.id).await.unwrap(), 0);
    assert_eq!(
        app.clickhouse.event_count(sentinel.id).await.unwrap(),
        1000,
        "the sentinel is intact"
    );
    for needle in [email.as_str(), company.as_str()] {
        assert_eq!(
            rows_mentioning(&app, needle).await,
            vec![],
            "{needle} is still stored"
        );
    }
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (ledger, keys, counters): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events WHERE tenant_id = $1), \
                (SELECT count(*) FROM usage_event_ids WHERE tenant_id = $1), \
                (SELECT count(*) FROM usage_counters WHERE tenant_id = $1)",
    )
    .bind(tenant.id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((ledger, keys, counters), (0, 0, 0));
    // The records that stay: the deletion record and the audit entry, with counts only.
    let (events_deleted, stripe_deleted): (i64, bool) = sqlx::query_as(
        "SELECT clickhouse_events_deleted, stripe_customer_deleted FROM tenant_deletions WHERE tenant_id = $1",
    )
    .bind(tenant.id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((events_deleted, stripe_deleted), (EVENTS as i64, true));
    let state: String = sqlx::query_scalar("SELECT state FROM tenants WHERE id = $1")
        .bind(tenant.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(state, "deleted");
    drop(tx);
    let stripe = stripe_get(&format!("/v1/customers/{customer}")).await;
    assert!(
        stripe["deleted"] == true || stripe.get("error").is_some(),
        "the Stripe customer remains: {stripe}"
    );

    // Asked again, by an operator: the same erasure, nothing breaks.
    let again = erase_as_operator(&app, tenant.id).await;
    assert_eq!(again.0, 202);
    assert_eq!(again.1["transition"]["id"], id.as_str());
    let verify = app.operator_get("/v1/admin/audit/verify").await;
    assert_eq!(verify["valid"], true, "{verify}");
}

async fn erase_as_operator(app: &TestApp, tenant: TenantId) -> (u16, Value) {
    let response = app
        .operator_post(
            &format!("/v1/admin/tenants/{tenant}/erasure"),
            &json!({"reason": "customer asked by mail"}),
        )
        .await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_erasure_job_run_twice_is_harmless() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("pro").await;
    ingest_many(&app, &tenant.api_key, "twice", 1000).await;
    app.drain_relay().await;
    let (status, accepted) = erase_as_operator(&app, tenant.id).await;
    assert_eq!(status, 202);
    let id = accepted["transition"]["id"].as_str().unwrap().to_owned();
    // Run the job, then force it to run once more as if a worker died before finishing.
    let worker = || {
        jobs::Worker::new(&app.db, jobs::WorkerSettings::default()).register(
            privacy::ErasureWorkflow::new(app.db.clone(), app.clickhouse.clone(), None, None),
        )
    };
    assert_eq!(worker().run_pending().await.unwrap(), 1);
    assert_eq!(transition_status(&app, &id).await, "completed");
    let mut tx = app.db.system_tx("test rerun").await.unwrap();
    sqlx::query("UPDATE tenant_transitions SET status = 'running' WHERE id = $1")
        .bind(id.parse::<saas_core::TransitionId>().unwrap().as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET status = 'pending', run_at = now() WHERE kind = 'lifecycle.erasure'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(worker().run_pending().await.unwrap(), 1);
    assert_eq!(transition_status(&app, &id).await, "completed");
    assert_eq!(app.clickhouse.event_count(tenant.id).await.unwrap(), 0);
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (records, events): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(clickhouse_events_deleted) FROM tenant_deletions WHERE tenant_id = $1",
    )
    .bind(tenant.id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        (records, events),
        (1, 1000),
        "one record, the second run deleted nothing more"
    );
}

#[tokio::test]
async fn erasure_mid_period_bills_the_usage_so_far_before_erasing_it() {
    let app = TestApp::spawn().await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    // 300,000 queries on starter: 200,000 past the included 100,000, at 50 per 1,000.
    let usage = json!([{"id": "q", "metric": "queries", "value": 300_000}]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    let (status, accepted) = erase_as_operator(&app, tenant.id).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["transition"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while transition_status(&app, &id).await != "completed" {
        assert!(Instant::now() < deadline, "erasure never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    #[derive(sqlx::FromRow, Debug)]
    struct Final {
        id: uuid::Uuid,
        period_end: chrono::DateTime<chrono::Utc>,
        total: i64,
        status: String,
        stripe_invoice_id: Option<String>,
        billed_email: Option<String>,
    }
    let invoices: Vec<Final> = {
        let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
        sqlx::query_as(
            "SELECT id, period_end, total, status, stripe_invoice_id, billed_email FROM invoices \
             WHERE tenant_id = $1 AND kind = 'period'",
        )
        .bind(tenant.id.as_uuid())
        .fetch_all(&mut *tx)
        .await
        .unwrap()
    };
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    let last = &invoices[0];
    assert!(
        last.period_end < chrono::Utc::now(),
        "billed up to the erasure"
    );
    assert_eq!(
        last.total, 10_000,
        "the overage, and no base fee ahead: {last:?}"
    );
    assert_eq!(last.status, "paid", "{last:?}");
    assert_eq!(last.billed_email, None, "kept without personal data");
    let at_stripe = stripe_get(&format!(
        "/v1/invoices/{}",
        last.stripe_invoice_id.as_deref().unwrap()
    ))
    .await;
    assert_eq!(at_stripe["status"], "paid", "{at_stripe}");
    assert_eq!(at_stripe["total"], 10_000);
    assert_eq!(at_stripe["metadata"]["saas_invoice"], last.id.to_string());
}
