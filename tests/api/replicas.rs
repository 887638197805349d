//! What lets several replicas share one database: roles, one elected scheduler, and
//! probes a load balancer can trust.

use std::time::Duration;

use db::leader::Election;
use integration_tests::{Stack, TestApp};
use secrecy::SecretString;
use sqlx::Connection;
use tokio::sync::watch;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn quick(office: &'static str) -> Election {
    Election {
        office,
        heartbeat: Duration::from_millis(100),
        idle_limit: Duration::from_secs(1),
    }
}

async fn wait_for(leading: &mut watch::Receiver<bool>, wanted: bool, within: Duration) -> bool {
    tokio::time::timeout(within, leading.wait_for(|leads| *leads == wanted))
        .await
        .is_ok()
}

#[tokio::test]
async fn one_candidate_leads_and_another_takes_over_when_it_stops() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let (stop_first, first_stopped) = watch::channel(false);
    let (mut first, first_task) = quick("test office").run(app.db.pool(), first_stopped);
    assert!(wait_for(&mut first, true, Duration::from_secs(5)).await);

    let (stop_second, second_stopped) = watch::channel(false);
    let (mut second, second_task) = quick("test office").run(app.db.pool(), second_stopped);
    // Several of its rounds go by without it taking the office.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!*second.borrow(), "two leaders at once");
    assert!(*first.borrow());

    // Another office is another election.
    let (stop_other, other_stopped) = watch::channel(false);
    let (mut other, other_task) = quick("another office").run(app.db.pool(), other_stopped);
    assert!(wait_for(&mut other, true, Duration::from_secs(5)).await);

    stop_first.send(true).unwrap();
    first_task.await.unwrap();
    assert!(!*first.borrow(), "a stopped candidate leads nothing");
    assert!(
        wait_for(&mut second, true, Duration::from_secs(2)).await,
        "the office passes on within a few heartbeats"
    );
    stop_second.send(true).unwrap();
    stop_other.send(true).unwrap();
    second_task.await.unwrap();
    other_task.await.unwrap();
}

#[tokio::test]
async fn a_frozen_leader_loses_the_office_once_its_session_idles_out() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    // A leader frozen in place (SIGSTOP, say): its session holds the lock, with the
    // idle limit every candidate sets, and never says another word.
    let mut frozen =
        sqlx::postgres::PgConnection::connect(&Stack::from_env().app_url(&app.database_name))
            .await
            .unwrap();
    sqlx::query("SELECT set_config('idle_session_timeout', '1000', false)")
        .execute(&mut frozen)
        .await
        .unwrap();
    let took: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('leader:' || 'frozen office', 0))",
    )
    .fetch_one(&mut frozen)
    .await
    .unwrap();
    assert!(took);

    let (stop, stopped) = watch::channel(false);
    let (mut candidate, task) = quick("frozen office").run(app.db.pool(), stopped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*candidate.borrow(), "the office is held");
    assert!(
        wait_for(&mut candidate, true, Duration::from_secs(5)).await,
        "Postgres ends the silent session, and the lock with it"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_process_without_the_api_role_serves_only_its_probes() {
    let app = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.roles.api = false;
    })
    .await;
    for path in ["/livez", "/readyz", "/healthz", "/metrics"] {
        let status = app.get(path).send().await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
    for path in ["/v1/plans", "/openapi.json", "/readiness", "/dashboard"] {
        let status = app.get(path).send().await.unwrap().status();
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn readyz_needs_postgres_but_neither_clickhouse_nor_stripe() {
    let dependencies_down = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.clickhouse.url = format!("http://127.0.0.1:{}", closed_port());
        config.stripe.api_base = format!("http://127.0.0.1:{}", closed_port());
    })
    .await;
    let answer = dependencies_down.get("/readyz").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let database_down = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.database.url = SecretString::from(format!(
            "postgres://saas_app@127.0.0.1:{}/nothing",
            closed_port()
        ));
    })
    .await;
    let answer = database_down.get("/readyz").send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "database_unreachable");
    let alive = database_down.get("/livez").send().await.unwrap().status();
    assert_eq!(alive, 200, "liveness asks nothing of Postgres");
}

fn signup(n: usize) -> serde_json::Value {
    serde_json::json!({
        "email": format!("client{n}@example.com"),
        "company": format!("Client {n} Ltd"),
        "plan": "free",
    })
}

/// Posts signups `numbers` at once, spread over `apps` in turn, each with the
/// `X-Forwarded-For` that `forwarded_for` gives it; the statuses in order.
async fn sign_up_many(
    apps: &[&TestApp],
    numbers: std::ops::Range<usize>,
    forwarded_for: impl Fn(usize) -> Option<String>,
) -> Vec<u16> {
    let requests = numbers.map(|n| {
        let app = apps[n % apps.len()];
        let mut request = app.post("/v1/signups").json(&signup(n));
        if let Some(client) = forwarded_for(n) {
            request = request.header("x-forwarded-for", client);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    });
    futures_util::future::join_all(requests).await
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn signups_from_one_address_share_one_limit_across_three_replicas() {
    let first = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.signups.rate_per_minute = 10.try_into().unwrap();
    })
    .await;
    let second = first.spawn_replica(|_| {}).await;
    let third = first.spawn_replica(|_| {}).await;
    let statuses = sign_up_many(&[&first, &second, &third], 0..30, |_| None).await;
    assert_eq!(count(&statuses, 202), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
    let refused = first
        .post("/v1/signups")
        .json(&signup(99))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=6).contains(&retry_after),
        "one more each 6 s: {retry_after}"
    );
    assert_eq!(integration_tests::error_code(refused).await, "rate_limited");
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_apart_and_a_stranger_forges_nothing() {
    let behind_proxy = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.signups.rate_per_minute = 2.try_into().unwrap();
        config.http.trusted_proxies = "127.0.0.1/32".parse().unwrap();
    })
    .await;
    let also_behind = behind_proxy.spawn_replica(|_| {}).await;
    // Two clients, three signups each, over both replicas.
    let statuses = sign_up_many(&[&behind_proxy, &also_behind], 0..6, |n| {
        Some(format!("198.51.100.{}", n % 2 + 1))
    })
    .await;
    assert_eq!(count(&statuses, 202), 4, "two each: {statuses:?}");

    // A replica that trusts no proxy: whatever the peer forwards, it is the client.
    let exposed = behind_proxy
        .spawn_replica(|config| config.http.trusted_proxies = Default::default())
        .await;
    let statuses = sign_up_many(&[&exposed], 10..14, |n| Some(format!("203.0.113.{n}"))).await;
    assert_eq!(count(&statuses, 202), 2, "all one client: {statuses:?}");
}

#[tokio::test]
async fn a_shared_limit_admits_exactly_its_burst_however_many_ask_at_once() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let limit = std::num::NonZeroU32::new(5).unwrap();
    for round in 0..5 {
        let bucket = format!("test:{round}");
        let asks = (0..40).map(|_| {
            let (db, bucket) = (app.db.clone(), bucket.clone());
            tokio::spawn(async move {
                let mut conn = db.pool().acquire().await.unwrap();
                tenancy::rate_limits::admit(&mut conn, &bucket, limit)
                    .await
                    .unwrap()
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        let admitted = answers
            .into_iter()
            .filter(|answer| *answer.as_ref().unwrap() == tenancy::rate_limits::Admission::Admitted)
            .count();
        assert_eq!(admitted, 5, "round {round}");
    }
}
