//! An invoice reads a final total: the run closes the period to usage and waits for the
//! batches still on their way into it, however late they commit; a batch that reaches a
//! closed period is metered in the next one. No fixed grace decides it.

use std::time::Duration;

use billing::invoices::Collection::Stripe as STRIPE;
use chrono::{DateTime, Utc};
use integration_tests::TestApp;
use saas_core::{BillingCycle, TenantState};
use serde_json::json;

fn config(config: &mut gateway::Config) {
    // The test drives the relay and the runs itself.
    config.workers.enabled = false;
}

fn instant(value: &serde_json::Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// Whether some session waits for a lock on `what` (`usage_counters` or `advisory`).
async fn someone_waits_on(app: &TestApp, what: &str) -> bool {
    let sql = match what {
        "advisory" => {
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'advisory')"
        }
        _ => {
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
              WHERE NOT l.granted AND c.relname = 'usage_counters') \
              OR EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'transactionid')"
        }
    };
    sqlx::query_scalar(sql)
        .fetch_one(&app.owner_pool)
        .await
        .unwrap()
}

async fn wait_until_someone_waits_on(app: &TestApp, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !someone_waits_on(app, what).await {
        assert!(
            std::time::Instant::now() < deadline,
            "nobody waits on {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tokens invoiced for the period starting at `start`, as the invoice's usage lines say.
async fn invoiced_tokens(app: &TestApp, tenant: saas_core::TenantId, start: DateTime<Utc>) -> u64 {
    let mut tx = app.db.tenant_tx(tenant).await.unwrap();
    let quantity: Option<String> = sqlx::query_scalar(
        "SELECT sum(l.quantity)::text FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
         WHERE i.kind = 'period' AND i.period_start = $1 AND l.metric = 'tokens' \
           AND l.kind IN ('included', 'overage')",
    )
    .bind(start)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    quantity.map_or(0, |q| q.parse().unwrap())
}

#[tokio::test]
async fn a_batch_still_committing_when_its_period_closes_is_invoiced_with_it() {
    let app = TestApp::spawn_with(config).await;
    let tenant = app
        .create_tenant_on_cycle("pro", TenantState::Active, false, BillingCycle::Seconds(8))
        .await;
    let first = json!([{"id": "first", "metric": "tokens", "value": 100}]);
    assert_eq!(app.ingest(&tenant.api_key, first).await.status(), 202);
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let (start, end) = (
        instant(&summary["period_start"]),
        instant(&summary["period_end"]),
    );

    // Another session holds the period's counter row: the next batch's transaction
    // stays open in the middle of its write, as a stalled one would.
    let mut holder = app.db.tenant_tx(tenant.id).await.unwrap();
    let held = sqlx::query("SELECT 1 FROM usage_counters WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant.id.as_uuid())
        .execute(&mut *holder)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(held, 1, "the period's tokens counter");
    let late = tokio::spawn({
        let (address, key) = (app.address.clone(), tenant.api_key.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{address}/v1/usage/events"))
                .bearer_auth(key)
                .json(&json!({"events": [{"id": "late", "metric": "tokens", "value": 20}]}))
                .send()
                .await
                .unwrap()
        }
    });
    wait_until_someone_waits_on(&app, "usage_counters").await;
    assert!(
        Utc::now() < end,
        "the batch was sent inside its period, which ended {} ms ago",
        (Utc::now() - end).num_milliseconds()
    );

    // The period ends; the run closes it, and waits for the batch on its way.
    let wait = (end - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    let run = tokio::spawn({
        let (db, sink) = (app.db.clone(), app.clickhouse.clone());
        async move {
            billing::invoices::run(&db, &sink, Utc::now(), Duration::ZERO, STRIPE)
                .await
                .unwrap()
        }
    });
    wait_until_someone_waits_on(&app, "advisory").await;
    assert!(!run.is_finished(), "the run did not wait for the batch");
    holder.rollback().await.unwrap();

    let late = late.await.unwrap();
    assert_eq!(late.status(), 202);
    let late: serde_json::Value = late.json().await.unwrap();
    assert_eq!(
        instant(&late["period_start"]),
        start,
        "metered in its own period"
    );
    run.await.unwrap();
    app.drain_relay().await;
    billing::invoices::run(&app.db, &app.clickhouse, Utc::now(), Duration::ZERO, STRIPE)
        .await
        .unwrap();
    assert_eq!(invoiced_tokens(&app, tenant.id, start).await, 120);
}

#[tokio::test]
async fn a_batch_that_reaches_a_closed_period_is_metered_in_the_next() {
    let app = TestApp::spawn_with(config).await;
    let tenant = app
        .create_tenant_on_cycle(
            "pro",
            TenantState::Active,
            false,
            BillingCycle::Seconds(3600),
        )
        .await;
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let (start, end) = (
        instant(&summary["period_start"]),
        instant(&summary["period_end"]),
    );
    metering::periods::close(&app.db, tenant.id, start)
        .await
        .unwrap();

    // As a process whose clock still reads a time inside the closed period would.
    let events = metering::event::validate_batch(
        serde_json::from_value(json!({"events": [{"id": "e", "metric": "tokens", "value": 5}]}))
            .unwrap(),
        start + chrono::TimeDelta::seconds(1),
    )
    .unwrap();
    let outcome = metering::ledger::ingest(
        &app.db,
        tenant.id,
        &events.events,
        0,
        start + chrono::TimeDelta::seconds(1),
    )
    .await
    .unwrap();
    assert_eq!((outcome.period.start, outcome.accepted), (end, 1));
    // Nothing of it in the closed period; all of it in the next.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let counted: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT period_start, used::text FROM usage_counters WHERE metric = 'tokens'",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(counted, vec![(end, "5".to_owned())]);
}
