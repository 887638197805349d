//! Three service processes on one database, as replicas behind a load balancer: a
//! client spreads its batches, and its retries, over all three, while one replica is
//! killed (SIGKILL) and another frozen (SIGSTOP). No acknowledged event is lost or
//! counted twice, and the usage reaches ClickHouse through whichever relay is left.

use std::time::{Duration, Instant};

use integration_tests::{ServiceProcess, TestApp};
use serde_json::json;

const BATCHES: usize = 120;
const EVENTS_PER_BATCH: usize = 50;

/// Sends batch `round` to the replicas in turn, starting at `round % 3`, until one
/// acknowledges it, as a load balancer with retries would; a replica that failed once is
/// out of rotation from then on (its health checks would fail too). Returns how many
/// sends it took.
async fn send(
    client: &reqwest::Client,
    replicas: &[&ServiceProcess],
    in_rotation: &mut [bool],
    api_key: &str,
    round: usize,
) -> usize {
    let events: Vec<_> = (0..EVENTS_PER_BATCH)
        .map(|i| json!({"id": format!("b{round}-e{i}"), "metric": "queries", "value": 1}))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut attempt = 0;
    loop {
        let index = (round + attempt) % replicas.len();
        attempt += 1;
        if !in_rotation[index] && in_rotation.iter().any(|up| *up) {
            continue;
        }
        let replica = replicas[index];
        let answer = client
            .post(replica.url("/v1/usage/events"))
            .bearer_auth(api_key)
            .json(&json!({ "events": events }))
            .send()
            .await;
        if let Ok(answer) = answer
            && answer.status() == 202
        {
            return attempt;
        }
        in_rotation[index] = false;
        assert!(
            Instant::now() < deadline,
            "batch {round} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_and_a_frozen_replica_lose_no_event_and_count_none_twice() {
    // The test's own app only reads; the three processes serve, relay and schedule.
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("enterprise").await;
    let settings = [("SAAS_WORKERS__RELAY_TIMEOUT_MS", "1500")];
    let mut killed = ServiceProcess::start_with(&app, &settings).await;
    let frozen = ServiceProcess::start_with(&app, &settings).await;
    let survivor = ServiceProcess::start_with(&app, &settings).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();

    let mut sends = 0;
    let mut in_rotation = [true; 3];
    for round in 0..BATCHES {
        if round == BATCHES / 3 {
            killed.kill().await;
            frozen.signal("STOP");
        }
        let replicas = [&killed, &frozen, &survivor];
        sends += send(&client, &replicas, &mut in_rotation, &tenant.api_key, round).await;
        // A client that lost an answer sends the batch again, here to another replica.
        if round % 5 == 0 {
            send(&client, &[&survivor], &mut [true], &tenant.api_key, round).await;
        }
    }
    assert!(
        sends > BATCHES,
        "some batches were retried on another replica"
    );

    let expected = (BATCHES * EVENTS_PER_BATCH) as u64;
    let usage = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(
        usage["metrics"]["queries"]["used"].as_u64(),
        Some(expected),
        "{usage}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let relayed = app.clickhouse.event_count(tenant.id).await.unwrap();
        if relayed == expected {
            break;
        }
        assert!(relayed < expected, "events relayed twice: {relayed}");
        assert!(
            Instant::now() < deadline,
            "relaying did not resume: {relayed} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    frozen.signal("CONT");
}
