//! Every event counted exactly once, whatever the client retries.

use integration_tests::{TestApp, error_code};
use serde_json::{Value, json};

fn events(prefix: &str, count: usize, metric: &str, value: u64) -> Value {
    Value::Array(
        (0..count)
            .map(|i| json!({"id": format!("{prefix}-{i}"), "metric": metric, "value": value}))
            .collect(),
    )
}

async fn used(app: &TestApp, api_key: &str, metric: &str) -> u64 {
    let summary = app.get_json(api_key, "/v1/usage/summary").await;
    summary["metrics"][metric]["used"].as_u64().unwrap()
}

async fn series_total(app: &TestApp, api_key: &str, metric: &str) -> u64 {
    let series = app
        .get_json(
            api_key,
            &format!("/v1/usage?metric={metric}&granularity=day"),
        )
        .await;
    series["total"].as_u64().unwrap()
}

/// An ingest answer's (accepted, duplicates).
fn counts(answer: &Value) -> (u64, u64) {
    (
        answer["accepted"].as_u64().unwrap(),
        answer["duplicates"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn retries_and_in_batch_twins_are_counted_once_and_reported_as_duplicates() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    let batch = events("a", 50, "queries", 3);

    let first: Value = app
        .ingest(&tenant.api_key, batch.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counts(&first), (50, 0));
    // The answer says which billing period the events were metered in.
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(first["period_start"], summary["period_start"]);
    assert_eq!(first["period_end"], summary["period_end"]);
    // The whole batch again, as a client retrying after a lost response.
    let retry = app.ingest(&tenant.api_key, batch).await;
    assert_eq!(retry.status(), 202);
    assert_eq!(counts(&retry.json::<Value>().await.unwrap()), (0, 50));
    // Twins inside one batch, and one id from before.
    let twins = json!([
        {"id": "b-1", "metric": "queries", "value": 5},
        {"id": "b-1", "metric": "queries", "value": 5},
        {"id": "a-0", "metric": "queries", "value": 3},
    ]);
    let response: Value = app
        .ingest(&tenant.api_key, twins)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counts(&response), (1, 2));

    // Exact the moment it is acknowledged, before and after the relay copies it.
    assert_eq!(used(&app, &tenant.api_key, "queries").await, 155);
    assert_eq!(series_total(&app, &tenant.api_key, "queries").await, 155);
    app.drain_relay().await;
    assert_eq!(series_total(&app, &tenant.api_key, "queries").await, 155);
    assert_eq!(app.clickhouse.event_count(tenant.id).await.unwrap(), 51);
}

#[tokio::test]
async fn concurrent_twins_are_counted_once() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    let batch = events("same", 100, "tokens", 7);
    let requests = (0..20).map(|_| app.ingest_until_admitted(&tenant.api_key, batch.clone()));
    let responses = futures_util::future::join_all(requests).await;
    let mut accepted = 0;
    let mut duplicates = 0;
    for (status, _, body) in responses {
        assert_eq!(status, 202);
        accepted += body["accepted"].as_u64().unwrap();
        duplicates += body["duplicates"].as_u64().unwrap();
    }
    assert_eq!(accepted, 100);
    assert_eq!(duplicates, 19 * 100);
    assert_eq!(used(&app, &tenant.api_key, "tokens").await, 700);
    app.drain_relay().await;
    assert_eq!(app.clickhouse.event_count(tenant.id).await.unwrap(), 100);
    assert_eq!(series_total(&app, &tenant.api_key, "tokens").await, 700);
}

#[tokio::test]
async fn series_buckets_by_minute_hour_and_day_and_matches_the_summary() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("enterprise").await;
    let now = chrono::Utc::now();
    let minute = |m: i64| (now - chrono::TimeDelta::minutes(m)).to_rfc3339();
    let batch = json!([
        {"id": "m0", "metric": "bytes", "value": 10, "timestamp": minute(0)},
        {"id": "m2a", "metric": "bytes", "value": 20, "timestamp": minute(2)},
        {"id": "m2b", "metric": "bytes", "value": 30, "timestamp": minute(2)},
        // The largest value there is: sums must not wrap, in Postgres or ClickHouse.
        {"id": "big", "metric": "tokens", "value": u64::MAX, "timestamp": minute(1)},
    ]);
    assert_eq!(app.ingest(&tenant.api_key, batch).await.status(), 202);
    // Half relayed, half not: the read must still count each once.
    app.drain_relay().await;
    let late = json!([{"id": "m1", "metric": "bytes", "value": 5, "timestamp": minute(1)}]);
    assert_eq!(app.ingest(&tenant.api_key, late).await.status(), 202);

    let from = (now - chrono::TimeDelta::minutes(5)).to_rfc3339();
    let path = format!(
        "/v1/usage?metric=bytes&granularity=minute&from={}",
        urlencode(&from)
    );
    let series = app.get_json(&tenant.api_key, &path).await;
    assert_eq!(series["total"], 65);
    let values: Vec<u64> = series["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values.iter().sum::<u64>(), 65);
    assert!(
        values.contains(&50) && values.contains(&5) && values.contains(&10),
        "{values:?}"
    );
    for granularity in ["hour", "day"] {
        let path = format!(
            "/v1/usage?metric=bytes&granularity={granularity}&from={}",
            urlencode(&from)
        );
        let series = app.get_json(&tenant.api_key, &path).await;
        assert_eq!(series["total"], 65, "{granularity}");
    }
    let path = format!(
        "/v1/usage?metric=tokens&granularity=day&from={}",
        urlencode(&from)
    );
    let tokens = app.get_json(&tenant.api_key, &path).await;
    assert_eq!(tokens["total"].as_u64(), Some(u64::MAX));
    assert_eq!(used(&app, &tenant.api_key, "tokens").await, u64::MAX);
    assert_eq!(used(&app, &tenant.api_key, "bytes").await, 65);
}

#[tokio::test]
async fn a_period_total_past_u64_is_refused_not_wrapped() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("enterprise").await;
    let first = json!([{"id": "x1", "metric": "tokens", "value": u64::MAX}]);
    assert_eq!(app.ingest(&tenant.api_key, first).await.status(), 202);
    let second = json!([{"id": "x2", "metric": "tokens", "value": 1}]);
    let response = app.ingest(&tenant.api_key, second).await;
    assert_eq!(response.status(), 422);
    assert_eq!(error_code(response).await, "usage_overflow");
    let in_batch = json!([
        {"id": "y1", "metric": "queries", "value": u64::MAX},
        {"id": "y2", "metric": "queries", "value": u64::MAX},
    ]);
    let response = app.ingest(&tenant.api_key, in_batch).await;
    assert_eq!(response.status(), 422);
    assert_eq!(used(&app, &tenant.api_key, "tokens").await, u64::MAX);
    assert_eq!(used(&app, &tenant.api_key, "queries").await, 0);
}

#[tokio::test]
async fn one_tenant_never_sees_or_affects_another_tenants_usage() {
    let app = TestApp::spawn().await;
    let alice = app.create_tenant("pro").await;
    let bob = app.create_tenant("pro").await;
    // Sentinel usage for Alice, then Bob sends events with the very same ids.
    assert_eq!(
        app.ingest(&alice.api_key, events("shared", 10, "queries", 1000))
            .await
            .status(),
        202
    );
    let bobs: Value = app
        .ingest(&bob.api_key, events("shared", 10, "queries", 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counts(&bobs), (10, 0), "event ids are per tenant");
    app.drain_relay().await;

    assert_eq!(used(&app, &alice.api_key, "queries").await, 10_000);
    assert_eq!(used(&app, &bob.api_key, "queries").await, 10);
    assert_eq!(series_total(&app, &alice.api_key, "queries").await, 10_000);
    assert_eq!(series_total(&app, &bob.api_key, "queries").await, 10);
    // No parameter lets a tenant name another tenant.
    let response = app
        .get(&format!("/v1/usage?metric=queries&tenant_id={}", alice.id))
        .bearer_auth(&bob.api_key)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["total"], 10);
    let response = app
        .post_as(
            &bob.api_key,
            "/v1/usage/events",
            &json!({"tenant_id": alice.id.to_string(), "events": events("z", 1, "queries", 1)}),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(used(&app, &alice.api_key, "queries").await, 10_000);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn concurrent_batches_of_every_metric_never_deadlock() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("enterprise").await;
    let metrics = ["queries", "tokens", "bytes"];
    let requests = (0..60).map(|batch| {
        // Each batch touches all three counters, listed in a different order.
        let events: Vec<Value> = (0..3)
            .map(|i| {
                let metric = metrics[(batch + i) % 3];
                json!({"id": format!("{batch}-{metric}"), "metric": metric, "value": 1})
            })
            .collect();
        app.ingest_until_admitted(&tenant.api_key, Value::Array(events))
    });
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .iter()
        .map(|(status, _, _)| status.as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    for metric in metrics {
        assert_eq!(used(&app, &tenant.api_key, metric).await, 60, "{metric}");
    }
}
