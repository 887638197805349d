//! Ingest benchmark: drives `saas serve` (a separate process) over HTTP with batches of
//! usage events from many tenants, and prints durable events/s, request latency,
//! event-to-visible latency, the service's peak memory, and, in the same run, the rate
//! of a raw Postgres COPY of the same number of rows as the ceiling.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin saas --bin ingest-bench && target/release/ingest-bench

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::{APP, OWNER, Service, batch_body, fresh_database, ms, percentile, pg_url};
use chrono::Utc;
use clap::Parser;
use saas_core::TenantId;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tenancy::Db;
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value = "saas_bench")]
    database: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = |line: String| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    out(format!(
        "ingest-bench: {} tenants, batches of {}, {} in flight, {} s",
        args.tenants, args.batch, args.concurrency, args.seconds
    ));
    fresh_database(&args.database).await?;
    let keys: Vec<String> = bench::create_tenants(&args.database, args.tenants)
        .await?
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    let service = Service::start(&args.database, &[]).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let (client, url, keys) = (
            client.clone(),
            service.url("/v1/usage/events"),
            keys.clone(),
        );
        let (stop, accepted, failures, refused, latencies) = (
            stop.clone(),
            accepted.clone(),
            failures.clone(),
            refused.clone(),
            latencies.clone(),
        );
        let batch_size = args.batch;
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut sequence = 0usize;
            // Tenant 0 is the visibility probe's own; workers use the others.
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[1 + (worker + sequence * 7) % (keys.len() - 1)];
                let body = batch_body(&format!("w{worker}-{sequence}"), batch_size);
                sequence += 1;
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 202 => {
                        let body: Value = r.json().await.unwrap_or_default();
                        accepted
                            .fetch_add(body["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        mine.push(sent.elapsed());
                    }
                    // A tenant's own cap on batches in flight: sent again later, as a
                    // client would; not a failure.
                    Ok(r) if r.status() == 429 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }
    let visibility = tokio::spawn(probe_visibility(
        client.clone(),
        service.url(""),
        keys[0].clone(),
        stop.clone(),
        args.batch,
    ));

    let mut last = 0;
    for second in 1..=args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = accepted.load(Ordering::Relaxed);
        if second % 5 == 0 {
            out(format!(
                "  {second:>3} s: {} events/s in the last second, {now} total",
                now - last
            ));
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    let mut visible = visibility.await?;
    let peak_memory = service.peak_memory_mib();
    let total = accepted.load(Ordering::Relaxed);
    let mut latencies = latencies.lock().await.clone();

    // The relay catching up after the load stops.
    let relay_started = Instant::now();
    let sink = metering::ClickHouseSink::new(&bench::clickhouse_settings(&args.database));
    let db = Db::from_pool(
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&pg_url(APP, &args.database))
            .await?,
    );
    let in_ledger: i64 = {
        let mut tx = db.system_tx("bench count").await?;
        sqlx::query_scalar("SELECT count(*) FROM usage_events")
            .fetch_one(&mut *tx)
            .await?
    };
    let in_clickhouse = loop {
        let n: u64 = sink
            .client()
            .query("SELECT count() FROM usage_events FINAL")
            .fetch_one()
            .await?;
        if n as i64 >= in_ledger || relay_started.elapsed() > Duration::from_secs(120) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let relay_catch_up = relay_started.elapsed();
    drop(service);

    let copy_rows = in_ledger.clamp(1, 2_000_000) as usize;
    let copy_rate = copy_ceiling(&args.database, copy_rows).await?;
    let rate = total as f64 / elapsed.as_secs_f64();

    out(String::new());
    out(format!(
        "durable events/s (202, committed in Postgres): {rate:>10.0}"
    ));
    out(format!(
        "events accepted:                               {total:>10}"
    ));
    out(format!(
        "failed requests:                               {:>10}",
        failures.load(Ordering::Relaxed)
    ));
    out(format!(
        "429 (the tenant's batches in flight at its cap):{:>9}",
        refused.load(Ordering::Relaxed)
    ));
    out(format!(
        "request latency p50:                           {:>10.2} ms",
        ms(percentile(&mut latencies, 50.0))
    ));
    out(format!(
        "request latency p99:                           {:>10.2} ms",
        ms(percentile(&mut latencies, 99.0))
    ));
    out(format!(
        "event-to-visible p50 (ack to /v1/usage):       {:>10.2} ms",
        ms(percentile(&mut visible, 50.0))
    ));
    out(format!(
        "event-to-visible p99 (ack to /v1/usage):       {:>10.2} ms  ({} samples)",
        ms(percentile(&mut visible, 99.0)),
        visible.len()
    ));
    out(format!(
        "gateway peak memory (VmHWM):                   {:>10.1} MiB",
        peak_memory.unwrap_or(f64::NAN)
    ));
    out(format!(
        "relay: {in_clickhouse} of {in_ledger} events in ClickHouse {:.1} s after the load stopped",
        relay_catch_up.as_secs_f64()
    ));
    out(format!(
        "raw Postgres COPY of {copy_rows} rows (ceiling):     {copy_rate:>10.0} rows/s"
    ));
    out(format!(
        "ratio to the ceiling:                          {:>10.1} %",
        100.0 * rate / copy_rate
    ));
    Ok(())
}

/// Sends a batch for its own tenant, and on the 202 polls /v1/usage until the total
/// includes it: the time from acknowledgement to visibility.
async fn probe_visibility(
    client: reqwest::Client,
    base: String,
    key: String,
    stop: Arc<AtomicBool>,
    batch: usize,
) -> Vec<Duration> {
    let mut samples = Vec::new();
    let mut expected = 0u64;
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let events: Vec<Value> = (0..batch)
            .map(|i| json!({"id": format!("probe-{round}-{i}"), "metric": "queries", "value": 1}))
            .collect();
        let Ok(response) = client
            .post(format!("{base}/v1/usage/events"))
            .bearer_auth(&key)
            .json(&json!({"events": events}))
            .send()
            .await
        else {
            continue;
        };
        if response.status() != 202 {
            continue;
        }
        let acknowledged = Instant::now();
        expected += batch as u64;
        loop {
            let total = async {
                let body: Value = client
                    .get(format!("{base}/v1/usage?metric=queries&granularity=day"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                body["total"].as_u64()
            }
            .await;
            if total.is_some_and(|t| t >= expected) {
                samples.push(acknowledged.elapsed());
                break;
            }
            if acknowledged.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// Rows per second of a raw COPY of `rows` usage rows into a table shaped like the ledger
/// (same primary key), as the saas_owner role.
async fn copy_ceiling(database: &str, rows: usize) -> anyhow::Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg_url(OWNER, database))
        .await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS copy_ceiling; \
         CREATE TABLE copy_ceiling (tenant_id uuid, event_id text, metric text, value numeric(20,0), \
         event_time timestamptz, period_start timestamptz, PRIMARY KEY (tenant_id, event_id))",
    )
    .execute(&pool)
    .await?;
    let tenants: Vec<String> = (0..100)
        .map(|_| TenantId::new().as_uuid().to_string())
        .collect();
    let now = Utc::now().to_rfc3339();
    let mut data = String::with_capacity(rows * 120);
    for i in 0..rows {
        data.push_str(&format!(
            "{}\tw{}-{}\ttokens\t1\t{now}\t{now}\n",
            tenants[i % 100],
            i / 100,
            i % 100
        ));
    }
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY copy_ceiling (tenant_id, event_id, metric, value, event_time, period_start) FROM STDIN")
        .await?;
    copy.send(data.as_bytes()).await?;
    copy.finish().await?;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE copy_ceiling")
        .execute(&mut *conn)
        .await?;
    Ok(rate)
}
