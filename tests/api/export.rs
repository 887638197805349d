//! The GDPR export streams: every event once, whether ClickHouse, the ledger or both
//! hold it, at any size, one export per tenant at a time.

use integration_tests::{TestApp, error_code};
use serde_json::{Value, json};

async fn ingest_range(app: &TestApp, key: &str, ids: std::ops::Range<usize>) {
    let events: Vec<Value> = ids
        .map(|i| json!({"id": format!("ev-{i:06}"), "metric": "tokens", "value": i}))
        .collect();
    let response = app.ingest(key, Value::Array(events)).await;
    let status = response.status();
    assert_eq!(status, 202, "{}", response.text().await.unwrap());
}

#[tokio::test]
async fn events_in_clickhouse_the_ledger_or_both_are_exported_once_each() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("enterprise").await;
    // 0..3000 relayed, then the batches of 0..1500 gone from the ledger (as when their
    // slot is emptied): those are in ClickHouse only. 3000..4500 are not relayed: in the
    // ledger only. 1500..3000 are in both.
    for start in (0..3000).step_by(500) {
        ingest_range(&app, &tenant.api_key, start..start + 500).await;
    }
    app.drain_relay().await;
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let emptied = sqlx::query("DELETE FROM usage_batches WHERE event_ids[1] < 'ev-001500'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(emptied.rows_affected(), 3);
    tx.commit().await.unwrap();
    ingest_range(&app, &tenant.api_key, 3000..4000).await;
    ingest_range(&app, &tenant.api_key, 4000..4500).await;

    let response = app
        .get("/v1/tenant/export")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "streamed, not built whole: {:?}",
        response.headers()
    );
    let export: Value = response.json().await.unwrap();
    let events = export["usage_events"].as_array().unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..4500).map(|i| format!("ev-{i:06}")).collect();
    assert_eq!(ids, expected, "each event once, in id order");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["value"], json!(i), "{event}");
        assert_eq!(event["metric"], "tokens");
    }
    assert_eq!(
        export["tenant"]["id"],
        json!(tenant.id.as_uuid().to_string())
    );
}

#[tokio::test]
async fn one_export_per_tenant_runs_at_a_time() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("enterprise").await;
    let other = app.create_tenant("enterprise").await;
    // Enough ledger rows (about 17 MB of JSON) that the first export cannot finish
    // while its client is not reading.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    sqlx::query(
        "INSERT INTO usage_batches (slot, tenant_id, period_start, events, event_ids, metrics, \
                                    event_values, event_times) \
         SELECT 0, $1, now(), count(*), array_agg('bulk-' || lpad(i::text, 120, '0')), \
                array_agg('tokens'::text), array_agg(i::numeric), array_agg(now()) \
         FROM generate_series(1, 100000) AS i",
    )
    .bind(tenant.id.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let export = || {
        app.get("/v1/tenant/export")
            .bearer_auth(&tenant.api_key)
            .send()
    };
    let running = export().await.unwrap();
    assert_eq!(running.status(), 200);
    let second = export().await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(error_code(second).await, "export_in_progress");
    // Another tenant is not held up.
    let response = app
        .get("/v1/tenant/export")
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Read to the end: the whole document, and the slot is free again.
    let document: Value = running.json().await.unwrap();
    assert_eq!(document["usage_events"].as_array().unwrap().len(), 100_000);
    let mut again = export().await.unwrap();
    for _ in 0..50 {
        if again.status() == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        again = export().await.unwrap();
    }
    assert_eq!(again.status(), 200);
}
