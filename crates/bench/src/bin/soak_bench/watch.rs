//! Per-minute figures of the soak, read from outside: the service's own `/metrics` and
//! its resident memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bench::{ms, percentile};
use tokio::sync::Mutex;

use crate::load::Counters;
use crate::out;

pub struct Minute {
    pub acked_per_second: f64,
    pub ingest_p99: Duration,
    pub relay_lag_p99: f64,
    pub ledger_rows: f64,
    pub dedup_keys: f64,
    pub ledger_bytes: f64,
    pub memory_mib: f64,
}

/// Samples once a second for `duration`; returns a row per whole minute.
pub async fn watch(
    keys: Keys,
    metrics_url: String,
    pid: Option<u32>,
    client: reqwest::Client,
    counters: Arc<Counters>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    duration: Duration,
) -> Vec<Minute> {
    let started = Instant::now();
    let mut minutes = Vec::new();
    let mut lags = Vec::new();
    let mut acked_before = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut gauges = Gauges::default();
    while started.elapsed() < duration + Duration::from_millis(500) {
        tick.tick().await;
        if let Ok(text) = fetch(&client, &metrics_url).await {
            gauges = Gauges::parse(&text);
            lags.push(Duration::from_secs_f64(gauges.lag));
        }
        let elapsed = started.elapsed().as_secs();
        // A row once each whole minute has passed.
        if elapsed / 60 <= minutes.len() as u64 {
            continue;
        }
        let acked = counters.fresh.load(Ordering::Relaxed);
        let mut minute_latencies = std::mem::take(&mut *latencies.lock().await);
        let minute = Minute {
            acked_per_second: (acked - acked_before) as f64 / 60.0,
            ingest_p99: percentile(&mut minute_latencies, 99.0),
            relay_lag_p99: percentile(&mut lags, 99.0).as_secs_f64(),
            ledger_rows: gauges.ledger_rows,
            dedup_keys: keys.count().await.unwrap_or(f64::NAN),
            ledger_bytes: gauges.ledger_bytes,
            memory_mib: pid
                .and_then(|pid| bench::process_memory_mib(pid, "VmRSS:"))
                .unwrap_or(f64::NAN),
        };
        lags.clear();
        acked_before = acked;
        out(format!(
            "  minute {:>3}: {:>7.0} events/s acked, ingest p99 {:>7.1} ms, relay lag p99 \
             {:>5.1} s, ledger {:>9.0} batch rows {:>10.0} keys {:>7.1} MiB, service {:>6.1} MiB",
            minutes.len() + 1,
            minute.acked_per_second,
            ms(minute.ingest_p99),
            minute.relay_lag_p99,
            minute.ledger_rows,
            minute.dedup_keys,
            minute.ledger_bytes / 1_048_576.0,
            minute.memory_mib
        ));
        minutes.push(minute);
    }
    minutes
}

/// The run's summary: whether the ledger and the service's memory levelled off (the
/// second half's peak within a fifth of the first half's).
pub fn report(minutes: &[Minute]) {
    if minutes.len() < 4 {
        out("too few minutes to tell whether anything levels off".into());
        return;
    }
    let half = minutes.len() / 2;
    let peak = |range: &[Minute], value: fn(&Minute) -> f64| {
        range.iter().map(value).fold(f64::MIN, f64::max)
    };
    for (name, value) in [
        (
            "ledger bytes",
            (|m: &Minute| m.ledger_bytes) as fn(&Minute) -> f64,
        ),
        ("dedup keys", |m: &Minute| m.dedup_keys),
        ("service memory", |m: &Minute| m.memory_mib),
    ] {
        let (first, second) = (peak(&minutes[..half], value), peak(&minutes[half..], value));
        out(format!(
            "{name}: peak {first:.0} in the first half, {second:.0} in the second: {}",
            if second <= first * 1.2 {
                "levels off"
            } else {
                "STILL GROWING"
            }
        ));
    }
    let rate: f64 = minutes.iter().map(|m| m.acked_per_second).sum::<f64>() / minutes.len() as f64;
    out(format!("acknowledged: {rate:.0} events/s on average"));
}

#[derive(Default)]
struct Gauges {
    lag: f64,
    ledger_rows: f64,
    ledger_bytes: f64,
}

impl Gauges {
    fn parse(text: &str) -> Self {
        let mut gauges = Gauges::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match name {
                "usage_relay_lag_seconds" => gauges.lag = value,
                "usage_ledger_rows" => gauges.ledger_rows = value,
                "usage_ledger_bytes" => gauges.ledger_bytes = value,
                _ => {}
            }
        }
        gauges
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> reqwest::Result<String> {
    client.get(url).send().await?.text().await
}

/// Counts the dedup keys in Postgres (the service does not: there may be billions).
pub struct Keys(sqlx::PgPool);

impl Keys {
    pub async fn connect(database: &str) -> anyhow::Result<Keys> {
        Ok(Keys(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&bench::pg_url(bench::OWNER, database))
                .await?,
        ))
    }

    async fn count(&self) -> sqlx::Result<f64> {
        let mut tx = self.0.begin().await?;
        sqlx::query("SELECT set_config('app.system', 'on', true)")
            .execute(&mut *tx)
            .await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_event_ids")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(count as f64)
    }
}
