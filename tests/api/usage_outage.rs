//! ClickHouse down: ingestion keeps answering 202 from the Postgres ledger, and the
//! backlog drains, counted once, when it is back.

use integration_tests::{FaultProxy, Stack, TestApp, metric_value};
use serde_json::json;

#[tokio::test]
async fn ingestion_survives_a_clickhouse_outage_and_the_backlog_drains_once() {
    let stack = Stack::from_env();
    let proxy = FaultProxy::start(
        stack
            .clickhouse_url
            .trim_start_matches("http://")
            .to_owned(),
    )
    .await;
    let proxy_url = proxy.url();
    let app = TestApp::spawn_with(|config| {
        config.clickhouse.url = proxy_url;
        config.workers.relay_idle_ms = 20;
    })
    .await;
    let tenant = app.create_tenant("enterprise").await;
    let batch = |round: usize| {
        json!(
            (0..100)
                .map(|i| json!({"id": format!("{round}-{i}"), "metric": "queries", "value": 2}))
                .collect::<Vec<_>>()
        )
    };
    assert_eq!(app.ingest(&tenant.api_key, batch(0)).await.status(), 202);

    proxy.cut();
    for round in 1..=20 {
        let response = app.ingest(&tenant.api_key, batch(round)).await;
        assert_eq!(
            response.status(),
            202,
            "ingest must not depend on ClickHouse"
        );
    }
    // Replays of batches sent during the outage are still recognised.
    let replay: serde_json::Value = app
        .ingest(&tenant.api_key, batch(5))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replay["duplicates"], 100);
    // The summary comes from the ledger and stays exact.
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 21 * 100 * 2);
    // Series need ClickHouse: a clear 503, not a wrong number.
    let response = app
        .get("/v1/usage?metric=queries")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        integration_tests::error_code(response).await,
        "usage_store_unavailable"
    );
    // The relay's lag gauge sees the backlog age while ClickHouse is away.
    wait_for_lag(&app, |lag| lag > 0.0).await;

    proxy.restore();
    // The app's own relay catches up; wait for it rather than draining ourselves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let count = app.clickhouse.event_count(tenant.id).await.unwrap();
        if count == 2100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backlog not drained: {count} of 2100"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let series = app
        .get_json(&tenant.api_key, "/v1/usage?metric=queries&granularity=day")
        .await;
    assert_eq!(series["total"], 4200);
    // Caught up: nothing waits, no lag.
    wait_for_lag(&app, |lag| lag == 0.0).await;
}

/// Waits until `usage_relay_lag_seconds` on /metrics satisfies `wanted`.
async fn wait_for_lag(app: &TestApp, wanted: impl Fn(f64) -> bool) {
    app.metrics_until("the relay lag wanted", |page| {
        metric_value(page, "usage_relay_lag_seconds").is_some_and(&wanted)
    })
    .await;
}
