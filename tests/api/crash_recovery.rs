//! The service killed with SIGKILL again and again during a long ingest, by a client that
//! retries everything not acknowledged: afterwards every acknowledged event is in
//! Postgres and in ClickHouse exactly once, and the counters agree.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::{ServiceProcess, TestApp};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const BATCHES: usize = 600;
const BATCH_SIZE: usize = 50;
const KILLS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_nothing_and_counts_nothing_twice() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("enterprise").await;
    let service = Arc::new(Mutex::new(ServiceProcess::start(&app).await));
    let url = service.lock().await.url("/v1/usage/events");

    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let service = service.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            while kills < KILLS && !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150 + 37 * (kills as u64 % 5))).await;
                let mut service = service.lock().await;
                service.kill().await;
                kills += 1;
                service.restart().await;
            }
            kills
        })
    };

    // Two clients, each retrying its batches until they are acknowledged.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut clients = Vec::new();
    for client_index in 0..2 {
        let url = url.clone();
        let key = tenant.api_key.clone();
        let acknowledged = acknowledged.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut attempts = 0;
            for batch in (client_index..BATCHES).step_by(2) {
                let events: Vec<Value> = (0..BATCH_SIZE)
                    .map(|i| json!({"id": format!("e-{batch}-{i}"), "metric": "tokens", "value": batch * 1000 + i}))
                    .collect();
                loop {
                    attempts += 1;
                    let sent = http.post(&url).bearer_auth(&key).json(&json!({"events": events})).send().await;
                    if sent.is_ok_and(|response| response.status() == 202) {
                        let ids = events.iter().map(|e| e["id"].as_str().unwrap().to_owned());
                        acknowledged.lock().await.extend(ids);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            attempts
        }));
    }
    let mut attempts = 0;
    for client in clients {
        attempts += client.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let kills = killer.await.unwrap();
    assert!(kills >= 8, "only {kills} kills happened during the ingest");
    assert!(
        attempts > BATCHES,
        "no request was ever retried ({attempts} attempts)"
    );

    let acknowledged = acknowledged.lock().await.clone();
    assert_eq!(acknowledged.len(), BATCHES * BATCH_SIZE);
    let expected_sum: u64 = (0..BATCHES)
        .flat_map(|batch| (0..BATCH_SIZE).map(move |i| (batch * 1000 + i) as u64))
        .sum();

    // Postgres: every acknowledged id once, nothing else, counters equal to the events.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM usage_events ORDER BY event_id")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let counter: String =
        sqlx::query_scalar("SELECT used::text FROM usage_counters WHERE metric = 'tokens'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    drop(tx);
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), acknowledged);
    assert_eq!(counter, expected_sum.to_string());

    // ClickHouse, after the relay (killed mid-batch too) catches up: the same events, once.
    service.lock().await.kill().await;
    app.drain_relay().await;
    assert_eq!(
        app.clickhouse.event_count(tenant.id).await.unwrap(),
        acknowledged.len() as u64
    );
    let distinct: u64 = app
        .clickhouse
        .client()
        .query("SELECT uniqExact(event_id) FROM usage_events WHERE tenant_id = toUUID(?)")
        .bind(tenant.id.as_uuid().to_string())
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(distinct, acknowledged.len() as u64);
    let series = app
        .get_json(&tenant.api_key, "/v1/usage?metric=tokens&granularity=day")
        .await;
    assert_eq!(series["total"].as_u64(), Some(expected_sum));
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(
        summary["metrics"]["tokens"]["used"].as_u64(),
        Some(expected_sum)
    );
}
