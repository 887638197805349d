//! One tenant sending hundreds of batches at once cannot take the database pool from the
//! others: past `http.ingest_batches_per_tenant` its batches are refused at once with
//! 429 `rate_limited` (nothing of them metered), and the other tenants' batches are all
//! metered meanwhile.

use futures_util::future::join_all;
use integration_tests::{TestApp, error_code};
use serde_json::{Value, json};

const EVENTS_PER_BATCH: u64 = 1000;

fn batch(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..EVENTS_PER_BATCH)
            .map(|i| json!({"id": format!("{prefix}-{n}-{i}"), "metric": "queries", "value": 1}))
            .collect(),
    )
}

async fn used_queries(app: &TestApp, api_key: &str) -> u64 {
    let summary = app.get_json(api_key, "/v1/usage/summary").await;
    summary["metrics"]["queries"]["used"].as_u64().unwrap()
}

#[tokio::test]
async fn a_hot_tenant_cannot_take_the_pool_from_another() {
    let app = TestApp::spawn_with(|config| {
        config.database.max_connections = 10;
        config.http.ingest_batches_per_tenant = 3.try_into().unwrap();
    })
    .await;
    let hot = app.create_tenant("enterprise").await;
    let calm = app.create_tenant("enterprise").await;

    let hot_batches = join_all((0..400).map(|n| app.ingest(&hot.api_key, batch("hot", n))));
    let calm_batches = async {
        let mut statuses = Vec::new();
        for n in 0..20 {
            statuses.push(app.ingest(&calm.api_key, batch("calm", n)).await.status());
        }
        statuses
    };
    let (hot_answers, calm_statuses) = tokio::join!(hot_batches, calm_batches);

    assert!(
        calm_statuses.iter().all(|status| *status == 202),
        "the other tenant's batches: {calm_statuses:?}"
    );
    let (mut metered, mut refused) = (0, Vec::new());
    for (n, answer) in hot_answers.into_iter().enumerate() {
        match answer.status().as_u16() {
            202 => metered += EVENTS_PER_BATCH,
            429 => {
                assert_eq!(answer.headers()["retry-after"], "1");
                assert_eq!(error_code(answer).await, "rate_limited");
                refused.push(n);
            }
            other => panic!("a hot tenant's batch answered {other}"),
        }
    }
    assert!(
        metered > 0 && !refused.is_empty(),
        "{metered} metered, {refused:?} refused"
    );
    // A refused batch left nothing behind: the counters hold the metered batches only,
    // and a refused one sent again is metered in full.
    assert_eq!(used_queries(&app, &hot.api_key).await, metered);
    assert_eq!(
        used_queries(&app, &calm.api_key).await,
        20 * EVENTS_PER_BATCH
    );
    let again = app.ingest(&hot.api_key, batch("hot", refused[0])).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(EVENTS_PER_BATCH), Some(0))
    );
    assert_eq!(
        used_queries(&app, &hot.api_key).await,
        metered + EVENTS_PER_BATCH
    );
}
