//! The ledger stays bounded without forgetting too early: dedup keys are dropped a whole
//! generation at a time, never before the window has passed, and relayed events a whole
//! slot at a time, never before they are in ClickHouse.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::TestApp;
use metering::retention::{self, RetentionSettings};
use serde_json::{Value, json};

/// Windows short enough to see retention at work within a test.
async fn spawn() -> (TestApp, RetentionSettings) {
    let app = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.workers.dedup_window_secs = 3;
        config.workers.ledger_slot_secs = 1;
    })
    .await;
    let settings = app.config.retention_settings();
    (app, settings)
}

fn batch(ids: &[String]) -> Value {
    json!(
        ids.iter()
            .map(|id| json!({"id": id, "metric": "queries", "value": 1}))
            .collect::<Vec<_>>()
    )
}

async fn send(app: &TestApp, key: &str, ids: &[String]) -> Value {
    let (status, _, body) = app.ingest_until_admitted(key, batch(ids)).await;
    assert_eq!(status, 202, "{body}");
    body
}

/// The dedup keys held, and how many of them are distinct.
async fn dedup_keys(app: &TestApp) -> (i64, i64) {
    let mut tx = app.owner_pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query_as("SELECT count(*), count(DISTINCT (tenant_id, key)) FROM usage_event_ids")
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_inside_the_window_counts_once_across_generations_and_keys_go_after_it() {
    let (app, settings) = spawn().await;
    let window = settings.dedup_window;
    let tenant = app.create_tenant("pro").await;

    // A new id every 150 ms, and every earlier id sent again with it, while generations
    // change every second: for 3.5 windows.
    let mut first_sent: BTreeMap<String, Instant> = BTreeMap::new();
    let (mut accepted, mut anew, mut generations) = (0u64, 0u64, 0);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < window * 7 / 2 {
        generations += u32::from(
            retention::run_pass(&app.db, &settings)
                .await
                .unwrap()
                .new_generation,
        );
        let id = format!("ev-{n:04}");
        n += 1;
        let mut ids: Vec<String> = first_sent.keys().cloned().collect();
        ids.push(id.clone());
        let sent = Instant::now();
        first_sent.insert(id, sent);
        let body = send(&app, &tenant.api_key, &ids).await;
        let answered = Instant::now();
        let count = body["accepted"].as_u64().unwrap();
        accepted += count;
        // Which ids were counted is not in the answer; beyond the new one, any counted id
        // must have been first accepted a whole window before this answer.
        let repeats = count - 1;
        let old_enough = first_sent
            .values()
            .filter(|first| answered.duration_since(**first) >= window)
            .count() as u64;
        assert!(
            repeats <= old_enough,
            "{repeats} ids counted again, only {old_enough} first sent a window ago"
        );
        anew += repeats;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    assert!(generations >= 8, "only {generations} generation changes");
    assert!(anew > 0, "no key was ever forgotten: retention did not run");
    // Every id was sent each round, so each is remembered, and by one generation only.
    let (keys, distinct) = dedup_keys(&app).await;
    assert_eq!(keys, first_sent.len() as i64);
    assert_eq!(distinct, keys, "an id is remembered by two generations");
    // Every acceptance, first or after the window, is in the period's total once.
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], accepted);
}

#[tokio::test]
async fn concurrent_twins_count_once_while_the_generation_changes() {
    let (app, settings) = spawn().await;
    let tenant = app.create_tenant("pro").await;

    // Generations change every second. For 4 s, twelve senders send the same fresh ids
    // at the same moments (a new set every 20 ms), so twins race each other across
    // every change, while another task changes generations as soon as due.
    let started = Instant::now();
    let until = started + Duration::from_millis(4_000);
    let roll = async {
        let mut changes = 0;
        while Instant::now() < until {
            changes += u32::from(
                retention::run_pass(&app.db, &settings)
                    .await
                    .unwrap()
                    .new_generation,
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        changes
    };
    let senders = (0..12).map(|sender| {
        let (app, key) = (&app, &tenant.api_key);
        async move {
            let (mut accepted, mut sent) = (0, std::collections::BTreeSet::new());
            while Instant::now() < until {
                let tick = started.elapsed().as_millis() / 20;
                // Each sender in its own order, so twins meet inside batches too.
                let mut ids: Vec<String> = (0..20).map(|i| format!("t{tick}-{i}")).collect();
                ids.rotate_left(sender % 20);
                accepted += send(app, key, &ids).await["accepted"].as_u64().unwrap();
                sent.extend(ids);
            }
            (accepted, sent)
        }
    });
    let (changes, answers) = tokio::join!(roll, futures_util::future::join_all(senders));
    assert!(changes >= 2, "only {changes} generation changes");
    let accepted: u64 = answers.iter().map(|(accepted, _)| accepted).sum();
    let distinct = answers
        .iter()
        .flat_map(|(_, sent)| sent)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert_eq!(accepted, distinct, "twins counted twice");
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], distinct);
}

#[tokio::test]
async fn a_slot_is_emptied_only_once_relayed_and_never_loses_an_event() {
    let (app, settings) = spawn().await;
    let tenant = app.create_tenant("pro").await;
    let ids = |prefix: &str| {
        (0..500)
            .map(|i| format!("{prefix}-{i}"))
            .collect::<Vec<_>>()
    };
    send(&app, &tenant.api_key, &ids("first")).await;

    // The slot moves on; its events are not relayed yet, so it keeps them.
    tokio::time::sleep(settings.slot_width + Duration::from_millis(100)).await;
    let pass = retention::run_pass(&app.db, &settings).await.unwrap();
    assert!(pass.new_slot);
    assert_eq!(pass.slots_emptied, 0, "an unrelayed slot was emptied");
    send(&app, &tenant.api_key, &ids("second")).await;
    assert_eq!(app.ledger_rows().await, 1_000);

    // Relayed: the old slot goes whole, the one taking events stays.
    app.drain_relay().await;
    let pass = retention::run_pass(&app.db, &settings).await.unwrap();
    assert_eq!(pass.slots_emptied, 1);
    assert_eq!(app.ledger_rows().await, 500);
    assert_eq!(app.clickhouse.event_count(tenant.id).await.unwrap(), 1_000);

    // Emptied, the events still count as sent: a retry of them is a duplicate, and the
    // totals, read from ClickHouse, hold every event once.
    let retry = send(&app, &tenant.api_key, &ids("first")).await;
    assert_eq!(retry["accepted"], 0);
    assert_eq!(retry["duplicates"], 500);
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 1_000);
    let series = app
        .get_json(&tenant.api_key, "/v1/usage?metric=queries&granularity=day")
        .await;
    assert_eq!(series["total"], 1_000, "{series}");
}

#[tokio::test]
async fn a_twin_cannot_slip_into_a_new_generation_while_its_first_is_uncommitted() {
    let (app, settings) = spawn().await;
    let tenant = app.create_tenant("pro").await;
    send(&app, &tenant.api_key, &["before".to_string()]).await;
    tokio::time::sleep(settings.generation_width()).await;

    // Hold the tenant's counter row, so the first batch stops after writing its key and
    // before committing.
    let mut holder = app.owner_pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.system', 'on', true)")
        .execute(&mut *holder)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM usage_counters WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant.id.as_uuid())
        .execute(&mut *holder)
        .await
        .unwrap();
    let ids = ["twin".to_string()];
    let twin = || send(&app, &tenant.api_key, &ids);
    let rest = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The generation is due, but may not change under a batch that has not
        // committed: its twin would find the key neither in the old generation (not
        // committed) nor in the new one (not there).
        let pass = retention::run_pass(&app.db, &settings).await.unwrap();
        let (second, ()) = tokio::join!(twin(), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.commit().await.unwrap();
        });
        (pass, second)
    };
    let (first, (pass, second)) = tokio::join!(twin(), rest);
    assert!(!pass.new_generation, "the generation changed under a batch");
    assert_eq!(
        first["accepted"].as_u64().unwrap() + second["accepted"].as_u64().unwrap(),
        1
    );
    // Once nothing is under way, it changes.
    assert!(
        retention::run_pass(&app.db, &settings)
            .await
            .unwrap()
            .new_generation
    );
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 2);
}

#[tokio::test]
async fn the_service_keys_an_id_as_the_migration_keyed_the_ids_before_it() {
    let app = TestApp::spawn().await;
    let mut tx = app.db.system_tx("test key").await.unwrap();
    for id in ["a", "ev-000001", "ünïcödé-🙂", &"x".repeat(128)] {
        let key: uuid::Uuid = sqlx::query_scalar("SELECT usage_event_key($1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(key, metering::ledger::dedup_key(id), "{id}");
    }
}
