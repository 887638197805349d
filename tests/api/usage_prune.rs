use integration_tests::TestApp;
use metering::prune::{DEFAULT_RETENTION, prune_once};
use serde_json::json;

#[tokio::test]
async fn only_relayed_events_past_the_retention_are_pruned_and_ids_stay_unique_until_then() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("pro").await;
    let batch = |ids: &[&str]| {
        json!(
            ids.iter()
                .map(|id| json!({"id": id, "metric": "queries", "value": 1}))
                .collect::<Vec<_>>()
        )
    };
    assert_eq!(
        app.ingest(&tenant.api_key, batch(&["old-relayed", "recent"]))
            .await
            .status(),
        202
    );
    app.drain_relay().await;
    assert_eq!(
        app.ingest(&tenant.api_key, batch(&["old-unrelayed"]))
            .await
            .status(),
        202
    );
    // Age two of them past the retention, behind the service's back.
    let mut tx = app.owner_pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE usage_events SET ingested_at = now() - interval '41 days' WHERE event_id LIKE 'old-%'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let now = chrono::Utc::now();
    assert_eq!(
        prune_once(&app.db, now, DEFAULT_RETENTION, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        prune_once(&app.db, now, DEFAULT_RETENTION, 100)
            .await
            .unwrap(),
        0
    );
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM usage_events ORDER BY event_id")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    drop(tx);
    assert_eq!(
        left,
        ["old-unrelayed", "recent"],
        "unrelayed rows are never pruned"
    );
    // Inside the window a retry is still recognised.
    let retry: serde_json::Value = app
        .ingest(&tenant.api_key, batch(&["recent"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retry["duplicates"], 1);
    // Pruning never touches ClickHouse or the period's totals.
    assert_eq!(app.clickhouse.event_count(tenant.id).await.unwrap(), 2);
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 3);
}
