//! Totals and series are read from per-minute rows: they agree with the events to the
//! unit, over ranges that do not start or end on a minute, and a relay that replays
//! everything it ever copied changes nothing.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use integration_tests::TestApp;
use saas_core::Metric;
use serde_json::{Value, json};

const MINUTES: i64 = 5;

fn at(start: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    start + TimeDelta::seconds(seconds)
}

async fn series(app: &TestApp, key: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let stamp = |time: DateTime<Utc>| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    app.get_json(
        key,
        &format!(
            "/v1/usage?metric=tokens&granularity=minute&from={}&to={}",
            stamp(from),
            stamp(to)
        ),
    )
    .await
}

#[tokio::test]
async fn minute_rows_agree_with_the_events_and_survive_a_full_replay() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("enterprise").await;
    // An event every 7 seconds over five whole minutes, in batches that straddle minutes.
    let start = (Utc::now() - TimeDelta::minutes(MINUTES + 2))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap();
    let events: Vec<(DateTime<Utc>, u64)> = (0..MINUTES * 60 / 7)
        .map(|i| (at(start, i * 7), 1_000 + i as u64 * 13))
        .collect();
    for (n, chunk) in events.chunks(9).enumerate() {
        let batch: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, (time, value))| {
                json!({"id": format!("e{n}-{i}"), "metric": "tokens", "value": value,
                       "timestamp": time.to_rfc3339()})
            })
            .collect();
        assert_eq!(
            app.ingest(&tenant.api_key, json!(batch)).await.status(),
            202
        );
    }
    app.drain_relay().await;
    check(&app, &tenant, start, &events, "relayed once").await;

    // The relay starts again from the beginning, as after losing its cursor: every
    // batch is written to ClickHouse a second time.
    assert_eq!(app.replay_relay_from_start().await, events.len());
    check(&app, &tenant, start, &events, "replayed").await;
}

async fn check(
    app: &TestApp,
    tenant: &integration_tests::TestTenant,
    start: DateTime<Utc>,
    events: &[(DateTime<Utc>, u64)],
    label: &str,
) {
    let expected = |from: DateTime<Utc>, to: DateTime<Utc>| -> u64 {
        events
            .iter()
            .filter(|(time, _)| *time >= from && *time < to)
            .map(|(_, value)| value)
            .sum()
    };
    // Whole minutes, a range starting and ending inside minutes, and one inside a single
    // minute.
    for (from, to) in [
        (start, at(start, MINUTES * 60)),
        (at(start, 23), at(start, 4 * 60 + 41)),
        (at(start, 65), at(start, 110)),
    ] {
        let series = series(app, &tenant.api_key, from, to).await;
        assert_eq!(
            series["total"].as_u64().unwrap(),
            expected(from, to),
            "{label}: {from}..{to}: {series}"
        );
    }
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let period_start: DateTime<Utc> = summary["period_start"].as_str().unwrap().parse().unwrap();
    let totals = app
        .clickhouse
        .period_totals(tenant.id, period_start)
        .await
        .unwrap();
    let all: u64 = events.iter().map(|(_, value)| value).sum();
    assert_eq!(totals, [(Metric::Tokens, u128::from(all))], "{label}");
}
