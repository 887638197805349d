//! A relay holder that hangs rather than dies keeps nothing: a service process frozen
//! (SIGSTOP) in the middle of a relay step, its ClickHouse insert stalled and the cursor
//! locked, loses its Postgres session once it has sat in its transaction for twice the
//! relay timeout; another relay then carries on from the cursor, and every event reaches
//! ClickHouse once.

use std::time::{Duration, Instant};

use integration_tests::{FaultProxy, ServiceProcess, Stack, TestApp};
use metering::ClickHouseSink;
use metering::relay::RelaySettings;
use metering::relay::{Relay, RelayStep};
use serde_json::json;

async fn cursor_locked(app: &TestApp) -> bool {
    let mut tx = app.db.system_tx("test cursor lock").await.unwrap();
    let free: Option<i64> =
        sqlx::query_scalar("SELECT ledger_seq FROM usage_relay_cursor FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    free.is_none()
}

#[tokio::test]
async fn a_frozen_relay_holder_loses_the_cursor_to_another_relay() {
    let stack = Stack::from_env();
    let clickhouse = FaultProxy::start(
        stack
            .clickhouse_url
            .trim_start_matches("http://")
            .to_owned(),
    )
    .await;
    // The test's own app meters; only the child process relays.
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("enterprise").await;
    let batch = |round: usize| {
        json!(
            (0..100)
                .map(|i| json!({"id": format!("{round}-{i}"), "metric": "queries", "value": 1}))
                .collect::<Vec<_>>()
        )
    };
    let clickhouse_url = clickhouse.url();
    let holder = ServiceProcess::start_with(
        &app,
        &[
            ("SAAS_CLICKHOUSE__URL", clickhouse_url.as_str()),
            ("SAAS_WORKERS__RELAY_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    assert_eq!(app.ingest(&tenant.api_key, batch(0)).await.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.clickhouse.event_count(tenant.id).await.unwrap() < 100 {
        assert!(Instant::now() < deadline, "the holder never relayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ClickHouse stalls: the holder's next step waits in its insert with the cursor
    // locked. Freeze it there.
    clickhouse.set(integration_tests::FaultMode::Stall);
    for round in 1..=4 {
        assert_eq!(
            app.ingest(&tenant.api_key, batch(round)).await.status(),
            202
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if cursor_locked(&app).await {
            holder.signal("STOP");
            if cursor_locked(&app).await {
                break;
            }
            holder.signal("CONT"); // it let go just then: catch it in its next step
        }
        assert!(
            Instant::now() < deadline,
            "the holder never took the cursor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clickhouse.restore();

    // Another relay, with ClickHouse reachable, takes over once Postgres has ended the
    // frozen holder's session (three seconds idle in its transaction).
    let relay = Relay::new(
        app.db.clone(),
        ClickHouseSink::new(&stack.clickhouse_settings()),
        RelaySettings::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut copied = 0;
    loop {
        match relay.step().await {
            Ok(RelayStep::Copied(0)) if copied > 0 => break,
            Ok(RelayStep::Copied(n)) => copied += n,
            Ok(RelayStep::Busy) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the frozen holder kept the cursor"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(copied, 400, "the four batches the holder never relayed");
    let usage = || async {
        let series = app
            .get_json(&tenant.api_key, "/v1/usage?metric=queries&granularity=day")
            .await;
        (
            app.clickhouse.event_count(tenant.id).await.unwrap(),
            series["total"].as_u64().unwrap(),
        )
    };
    assert_eq!(usage().await, (500, 500));
    // Thawed, the old holder may finish the insert it was frozen in: the same events and
    // minutes again, which count once.
    holder.signal("CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(usage().await, (500, 500));
}
