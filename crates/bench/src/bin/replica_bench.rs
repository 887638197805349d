//! Replica benchmark: several `saas serve` processes on one database, as behind a load
//! balancer. Prints ingest events/s with one and with three replicas, how long relaying
//! stops when the process holding the relay cursor is killed (SIGKILL) or frozen
//! (SIGSTOP) in the middle of a step, and how long invoicing 10,000 due tenants takes
//! with one and with three replicas (the scheduler queues invoice jobs; every replica's
//! job worker runs them).
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin saas --bin replica-bench && target/release/replica-bench
//!
//! Every process shares this machine's cores with the others and with the load
//! generator: more replicas add API capacity only where there are cores to run them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::{APP, Service, batch_body, fresh_database, out, pg_url};
use clap::Parser;
use fault_proxy::{FaultProxy, Mode};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tenancy::Db;

#[derive(Parser)]
struct Args {
    /// Seconds of load per replica count.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight at once, spread over the replicas.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tenants due for an invoice at once.
    #[arg(long, default_value_t = 10_000)]
    invoice_tenants: usize,
    #[arg(long, default_value = "saas_replica_bench")]
    database: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    out(format!(
        "replica-bench: ingest {} s per replica count (batches of {}, {} in flight); \
         relay takeover; invoicing {} tenants; Postgres pool {POOL_PER_REPLICA} per \
         process when several run",
        args.seconds, args.batch, args.concurrency, args.invoice_tenants
    ));
    let mut ingest = Vec::new();
    for replicas in [1, 3] {
        let rate = ingest_rate(&args, replicas).await?;
        out(format!(
            "  ingest with {replicas} replica(s): {rate:.0} events/s"
        ));
        ingest.push((replicas, rate));
    }
    let killed = takeover(&args, "KILL").await?;
    out(format!(
        "  relay takeover after SIGKILL of the holder: {:.2} s",
        killed.as_secs_f64()
    ));
    let frozen = takeover(&args, "STOP").await?;
    out(format!(
        "  relay takeover after SIGSTOP of the holder: {:.2} s",
        frozen.as_secs_f64()
    ));
    let mut invoicing = Vec::new();
    for replicas in [1, 3] {
        let took = invoice_run(&args, replicas).await?;
        out(format!(
            "  invoicing {} tenants with {replicas} replica(s): {:.1} s",
            args.invoice_tenants,
            took.as_secs_f64()
        ));
        invoicing.push((replicas, took));
    }

    out(String::new());
    for (replicas, rate) in &ingest {
        out(format!(
            "ingest events/s, {replicas} replica(s):            {rate:>10.0}"
        ));
    }
    out(format!(
        "relay takeover after SIGKILL of the holder:    {:>10.2} s",
        killed.as_secs_f64()
    ));
    out(format!(
        "relay takeover after SIGSTOP of the holder:    {:>10.2} s",
        frozen.as_secs_f64()
    ));
    for (replicas, took) in &invoicing {
        out(format!(
            "invoicing {} tenants, {replicas} replica(s):     {:>10.1} s",
            args.invoice_tenants,
            took.as_secs_f64()
        ));
    }
    Ok(())
}

/// Pooled Postgres connections per process when several run: three of them, each with
/// its pool and two connections of its own (the election, job notifications), stay
/// below Postgres' 100 (docs/scaling.md, "Connection budget"); one alone keeps the
/// default 32.
const POOL_PER_REPLICA: &str = "28";

/// `count` replicas of the service on `database`, each with `env`.
async fn replicas(
    database: &str,
    count: usize,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Service>> {
    let mut env = env.to_vec();
    if count > 1 {
        env.push(("SAAS_DATABASE__MAX_CONNECTIONS", POOL_PER_REPLICA));
    }
    let mut started = Vec::new();
    for _ in 0..count {
        started.push(Service::start(database, &env).await?);
    }
    Ok(started)
}

/// Kills every replica and waits until each is gone.
async fn stop_all(services: Vec<Service>) -> anyhow::Result<()> {
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

async fn db(database: &str) -> anyhow::Result<Db> {
    Ok(Db::from_pool(
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg_url(APP, database))
            .await?,
    ))
}

/// Durable events/s with load spread round-robin over `count` replicas.
async fn ingest_rate(args: &Args, count: usize) -> anyhow::Result<f64> {
    let database = format!("{}_ingest_{count}", args.database);
    fresh_database(&database).await?;
    let keys: Vec<String> = bench::create_tenants(&database, 100)
        .await?
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    let services = replicas(&database, count, &[]).await?;
    let urls: Vec<String> = services.iter().map(|s| s.url("/v1/usage/events")).collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let (client, urls, keys) = (client.clone(), urls.clone(), keys.clone());
        let (stop, accepted, size) = (stop.clone(), accepted.clone(), args.batch);
        workers.push(tokio::spawn(async move {
            let mut sequence = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[(worker + sequence * 7) % keys.len()];
                let url = &urls[(worker + sequence) % urls.len()];
                let body = batch_body(&format!("w{worker}-{sequence}"), size);
                sequence += 1;
                let response = client
                    .post(url)
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if let Ok(response) = response
                    && response.status() == 202
                {
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    accepted.fetch_add(body["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let rate = accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    stop_all(services).await?;
    Ok(rate)
}

/// Whether some relay holds the cursor now.
async fn cursor_locked(db: &Db) -> anyhow::Result<bool> {
    let mut tx = db.system_tx("bench cursor lock").await?;
    let free: Option<i64> =
        sqlx::query_scalar("SELECT ledger_seq FROM usage_relay_cursor FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await?;
    tx.rollback().await?;
    Ok(free.is_none())
}

/// The time from `signal` to the holder of the relay cursor, caught in the middle of a
/// step (its ClickHouse insert stalled), until every event acknowledged by then is in
/// ClickHouse, relayed by another replica.
async fn takeover(args: &Args, signal: &str) -> anyhow::Result<Duration> {
    let database = format!("{}_takeover_{}", args.database, signal.to_lowercase());
    fresh_database(&database).await?;
    let (tenant, key) = bench::create_tenants(&database, 1).await?.remove(0);
    let db = db(&database).await?;
    let sink = metering::ClickHouseSink::new(&bench::clickhouse_settings(&database));
    let proxy = FaultProxy::start(
        bench::clickhouse_url()
            .trim_start_matches("http://")
            .to_owned(),
    )
    .await;
    let proxy_url = proxy.url();
    let holder = Service::start(
        &database,
        &[
            ("SAAS_CLICKHOUSE__URL", proxy_url.as_str()),
            ("SAAS_DATABASE__MAX_CONNECTIONS", POOL_PER_REPLICA),
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let send = |round: usize, service: &Service| {
        let events: Vec<_> = (0..100)
            .map(|i| json!({"id": format!("{round}-{i}"), "metric": "queries", "value": 1}))
            .collect();
        client
            .post(service.url("/v1/usage/events"))
            .bearer_auth(&key)
            .json(&json!({ "events": events }))
            .send()
    };
    anyhow::ensure!(send(0, &holder).await?.status() == 202, "batch refused");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.event_count(tenant).await? < 100 {
        anyhow::ensure!(Instant::now() < deadline, "the holder never relayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ClickHouse stalls for the holder: its next step waits in its insert, the cursor
    // locked.
    proxy.set(Mode::Stall);
    anyhow::ensure!(send(1, &holder).await?.status() == 202, "batch refused");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cursor_locked(&db).await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the holder never took the cursor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The standbys, reaching ClickHouse directly, find the cursor taken.
    let standbys = replicas(&database, 2, &[]).await?;
    anyhow::ensure!(cursor_locked(&db).await?, "the holder let go");
    let pid = holder.child.id().expect("the holder runs").to_string();
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.clone()])
        .status()?;
    anyhow::ensure!(
        send(2, &standbys[0]).await?.status() == 202,
        "batch refused"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.event_count(tenant).await? < 300 {
        anyhow::ensure!(Instant::now() < deadline, "no replica took over the relay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = signalled.elapsed();
    if signal == "STOP" {
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()?;
    }
    drop((holder, standbys));
    Ok(took)
}

/// The time for `count` replicas to invoice `args.invoice_tenants` tenants that fall due
/// at once.
async fn invoice_run(args: &Args, count: usize) -> anyhow::Result<Duration> {
    let database = format!("{}_invoices_{count}", args.database);
    fresh_database(&database).await?;
    bench::create_tenants(&database, args.invoice_tenants).await?;
    let db = db(&database).await?;
    let services = replicas(
        &database,
        count,
        &[
            ("SAAS_BILLING__RUN_INTERVAL_MS", "200"),
            ("SAAS_BILLING__CLOSE_GRACE_MS", "0"),
            ("SAAS_READINESS__RUN_INTERVAL_MS", "0"),
        ],
    )
    .await?;
    // Every tenant's first month ended yesterday.
    let anchor = chrono::Utc::now() - chrono::TimeDelta::days(32);
    let started = Instant::now();
    let mut tx = db.system_tx("bench due").await?;
    sqlx::query("UPDATE tenants SET billing_anchor = $1, invoice_due_at = $1")
        .bind(anchor)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let target = i64::try_from(args.invoice_tenants)?;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    let mut last_report = Instant::now();
    loop {
        let mut tx = db.system_tx("bench count").await?;
        let made: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        if made >= target {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{made} of {target} invoiced");
        if last_report.elapsed() >= Duration::from_secs(10) {
            out(format!(
                "    {made} of {target} invoiced after {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    stop_all(services).await?;
    db.pool().close().await;
    Ok(took)
}
