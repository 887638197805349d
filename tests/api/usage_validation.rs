//! Bad input gets a 4xx with a stable code and meters nothing.

use integration_tests::{TestApp, error_code};
use serde_json::{Value, json};

#[tokio::test]
async fn bad_batches_are_refused_with_stable_codes_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|config| config.http.body_limit_bytes = 1024 * 1024).await;
    let tenant = app.create_tenant("pro").await;
    let now = chrono::Utc::now();
    let good = json!({"id": "good", "metric": "queries", "value": 1});
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(String, u16, &str)> = vec![
        (json!({"events": [good, {"id": "neg", "metric": "queries", "value": -1}]}).to_string(), 400, "invalid_body"),
        (json!({"events": [{"id": "f", "metric": "queries", "value": 1.5}]}).to_string(), 400, "invalid_body"),
        (r#"{"events": [{"id": "big", "metric": "queries", "value": 18446744073709551616}]}"#.into(), 400, "invalid_body"),
        (json!({"events": [{"id": "s", "metric": "queries", "value": "1"}]}).to_string(), 400, "invalid_body"),
        (json!({"events": [{"metric": "queries", "value": 1}]}).to_string(), 400, "invalid_body"),
        (json!({"events": [{"id": "u", "metric": "queries", "value": 1, "valeu": 2}]}).to_string(), 400, "invalid_body"),
        (r#"{"events": [{"id": "d", "id": "e", "metric": "queries", "value": 1}]}"#.into(), 400, "invalid_body"),
        (r#"{"events": [], "events": []}"#.into(), 400, "invalid_body"),
        // Deep nesting is refused without recursing through it.
        (format!(r#"{{"events": {deep}}}"#), 400, "invalid_body"),
        ("{\"events\": [".into(), 400, "malformed_json"),
        (json!({"events": []}).to_string(), 422, "empty_batch"),
        (json!({"events": [{"id": "m", "metric": "requests", "value": 1}]}).to_string(), 422, "unknown_metric"),
        (json!({"events": [{"id": "", "metric": "queries", "value": 1}]}).to_string(), 422, "invalid_event_id"),
        (json!({"events": [{"id": "x".repeat(129), "metric": "queries", "value": 1}]}).to_string(), 422, "invalid_event_id"),
        (json!({"events": [{"id": "ctl\u{1}", "metric": "queries", "value": 1}]}).to_string(), 422, "invalid_event_id"),
        (json!({"events": [{"id": "t", "metric": "queries", "value": 1, "timestamp": "soon"}]}).to_string(), 422, "invalid_timestamp"),
        (json!({"events": [{"id": "t", "metric": "queries", "value": 1,
            "timestamp": (now + chrono::TimeDelta::minutes(6)).to_rfc3339()}]}).to_string(), 422, "timestamp_in_future"),
        (json!({"events": [{"id": "t", "metric": "queries", "value": 1,
            "timestamp": (now - chrono::TimeDelta::days(36)).to_rfc3339()}]}).to_string(), 422, "timestamp_too_old"),
        (json!({"events": (0..1001).map(|i| json!({"id": i.to_string(), "metric": "queries", "value": 1})).collect::<Vec<_>>()}).to_string(), 422, "batch_too_large"),
        (json!({"events": [{"id": "big", "metric": "queries", "value": 1, "timestamp": "x".repeat(2 * 1024 * 1024)}]}).to_string(), 413, "payload_too_large"),
    ];
    for (body, status, code) in cases {
        let response = app
            .post("/v1/usage/events")
            .bearer_auth(&tenant.api_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let short: String = body.chars().take(80).collect();
        assert_eq!(response.status().as_u16(), status, "{short}");
        assert_eq!(error_code(response).await, code, "{short}");
    }
    let response = app
        .post("/v1/usage/events")
        .bearer_auth(&tenant.api_key)
        .header("content-type", "text/plain")
        .body(json!({"events": [good]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    for metric in ["queries", "tokens", "bytes"] {
        assert_eq!(summary["metrics"][metric]["used"], 0, "{metric}");
    }
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn bad_usage_queries_get_4xx() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    for (query, status, code) in [
        ("", 400, "invalid_parameter"),
        ("metric=cpu", 400, "invalid_parameter"),
        ("metric=queries&granularity=week", 400, "invalid_parameter"),
        ("metric=queries&from=yesterday", 400, "invalid_parameter"),
        (
            "metric=queries&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            422,
            "invalid_range",
        ),
        (
            "metric=queries&granularity=minute&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            422,
            "invalid_range",
        ),
    ] {
        let response = app
            .get(&format!("/v1/usage?{query}"))
            .bearer_auth(&tenant.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{query}");
        assert_eq!(error_code(response).await, code, "{query}");
    }
    let _: Value = app
        .get_json(&tenant.api_key, "/v1/usage?metric=queries")
        .await;
}
