//! Hard limits hold exactly under concurrency; soft limits count overage.

use integration_tests::{TestApp, error_code};
use saas_core::TenantState;
use serde_json::{Value, json};

#[tokio::test]
async fn concurrent_requests_at_the_limit_never_overshoot_it() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("free").await; // queries: hard limit 10,000
    let fill = json!([{"id": "fill", "metric": "queries", "value": 9_990}]);
    assert_eq!(app.ingest(&tenant.api_key, fill).await.status(), 202);

    for round in 0..3 {
        let requests = (0..50).map(|i| {
            app.ingest_until_admitted(
                &tenant.api_key,
                json!([{"id": format!("r{round}-{i}"), "metric": "queries", "value": 1}]),
            )
        });
        let responses = futures_util::future::join_all(requests).await;
        let mut accepted = 0;
        for (status, headers, body) in responses {
            match status.as_u16() {
                202 => accepted += 1,
                429 => {
                    let retry_after: u64 =
                        headers["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!(retry_after >= 1);
                    assert_eq!(body["error"]["code"], "quota_exceeded");
                }
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(accepted, if round == 0 { 10 } else { 0 }, "round {round}");
    }
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 10_000);
    assert_eq!(summary["metrics"]["queries"]["remaining"], 0);
}

#[tokio::test]
async fn a_batch_that_would_cross_a_hard_limit_is_refused_whole() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("free").await;
    let batch = json!([
        {"id": "t", "metric": "tokens", "value": 50},
        {"id": "q", "metric": "queries", "value": 10_001},
    ]);
    let response = app.ingest(&tenant.api_key, batch).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "quota_exceeded");
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(
        summary["metrics"]["tokens"]["used"], 0,
        "nothing of the batch was kept"
    );
    assert_eq!(summary["metrics"]["queries"]["used"], 0);
    // The same ids are still free to use: nothing was recorded under them.
    let retry = json!([{"id": "q", "metric": "queries", "value": 10_000}]);
    let response = app.ingest(&tenant.api_key, retry).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-quota-remaining-queries"], "0");
    assert_eq!(response.headers()["x-quota-remaining-tokens"], "100000");
}

#[tokio::test]
async fn soft_limits_accept_usage_past_the_included_units_as_overage() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await; // queries: 100,000 included, no cap
    let batch = json!([{"id": "a", "metric": "queries", "value": 150_000}]);
    let response = app.ingest(&tenant.api_key, batch).await;
    assert_eq!(response.status(), 202);
    assert!(!response.headers().contains_key("x-quota-remaining-queries"));
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let queries = &summary["metrics"]["queries"];
    assert_eq!(queries["used"], 150_000);
    assert_eq!(queries["overage"], 50_000);
    assert!(queries["limit"].is_null());
    let tenant_view = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(tenant_view["quotas"]["queries"]["used"], 150_000);
    assert_eq!(tenant_view["plan"], "starter");
    assert_eq!(tenant_view["state"], "active");
}

#[tokio::test]
async fn crossing_80_and_100_percent_is_recorded_once_each() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("free").await; // tokens: 100,000
    for (id, value) in [("a", 70_000), ("b", 10_000), ("c", 5_000), ("d", 15_000)] {
        let batch = json!([{"id": id, "metric": "tokens", "value": value}]);
        assert_eq!(app.ingest(&tenant.api_key, batch).await.status(), 202);
    }
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let alerts: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT metric, threshold_percent, used::text FROM quota_alerts ORDER BY threshold_percent",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        alerts,
        [
            ("tokens".into(), 80, "80000".into()),
            ("tokens".into(), 100, "100000".into())
        ]
    );
}

#[tokio::test]
async fn suspended_and_deleted_tenants_are_refused_and_nothing_is_metered() {
    let app = TestApp::spawn().await;
    let suspended = app
        .create_tenant_in_state("pro", TenantState::Suspended, false)
        .await;
    let event = json!([{"id": "a", "metric": "queries", "value": 1}]);
    let response = app.ingest(&suspended.api_key, event.clone()).await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "tenant_suspended");
    // Reading its own usage still works.
    let summary: Value = app.get_json(&suspended.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 0);

    // An erased tenant's key (even one never revoked) opens nothing at all.
    let deleted = app
        .create_tenant_in_state("pro", TenantState::Deleted, false)
        .await;
    let response = app.ingest(&deleted.api_key, event).await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_api_key");
    let mut tx = app.db.tenant_tx(deleted.id).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn events_are_bounded_per_plan_even_at_value_zero() {
    let app = TestApp::spawn().await;
    sqlx::query("UPDATE plan_metrics SET event_limit = 5 WHERE plan_code = 'free'")
        .execute(&app.owner_pool)
        .await
        .unwrap();
    let tenant = app.create_tenant("free").await;
    let zeros = |ids: std::ops::Range<u32>| {
        Value::Array(
            ids.map(|i| json!({"id": format!("z{i}"), "metric": "queries", "value": 0}))
                .collect(),
        )
    };
    assert_eq!(app.ingest(&tenant.api_key, zeros(0..4)).await.status(), 202);
    // A resent event is a duplicate, not a new row: it counts nothing.
    assert_eq!(app.ingest(&tenant.api_key, zeros(0..4)).await.status(), 202);
    let response = app.ingest(&tenant.api_key, zeros(4..6)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "event_limit_reached");
    assert_eq!(app.ingest(&tenant.api_key, zeros(4..5)).await.status(), 202);
    let response = app.ingest(&tenant.api_key, zeros(5..6)).await;
    assert_eq!(response.status(), 429);
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(stored, 5, "nothing of a refused batch is kept");
    // Other metrics have their own allowance; the plan shows it.
    let plans: Value = app
        .get("/v1/plans")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let free = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "free")
        .unwrap()
        .clone();
    assert_eq!(free["metrics"]["queries"]["event_limit"], 5);
}
