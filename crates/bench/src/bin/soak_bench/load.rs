//! The sustained load: batches at a fixed offered rate, spread over tenants by a Zipf
//! law, a share of each batch repeating ids its tenant sent moments before; then the
//! exact check that every fresh event is counted once everywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::Service;
use rand::Rng;
use saas_core::TenantId;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use crate::watch::{self, Minute};
use crate::{Args, out};

/// What the load did.
pub struct Soak {
    pub minutes: Vec<Minute>,
    /// Fresh events in batches answered 202: what every store must hold.
    pub fresh: u64,
    /// The answers' `accepted`, summed.
    pub acked: u64,
    /// Batches whose first answer counted other than their fresh events.
    pub miscounted: u64,
    pub not_sent: u64,
    pub gave_up: u64,
}

#[derive(Default)]
pub struct Counters {
    pub fresh: AtomicU64,
    pub acked: AtomicU64,
    pub duplicates_sent: AtomicU64,
    pub miscounted: AtomicU64,
    pub not_sent: AtomicU64,
    pub retries: AtomicU64,
    pub gave_up: AtomicU64,
}

/// The fresh ids of a tenant's last accepted batch, and when: the pool its duplicates are
/// drawn from, so that every repeat is of an id first accepted moments before.
type Recent = Arc<Vec<Mutex<Option<(Vec<String>, Instant)>>>>;

pub async fn run(
    args: &Args,
    service: &Service,
    client: &reqwest::Client,
    tenants: &[(TenantId, String)],
) -> anyhow::Result<Soak> {
    let zipf = cumulative_zipf(tenants.len(), args.zipf);
    let recent: Recent = Arc::new((0..tenants.len()).map(|_| Mutex::new(None)).collect());
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let url = service.url("/v1/usage/events");
    let duration = Duration::from_secs(args.minutes * 60);
    // Repeats come from ids at most half a window old: all still remembered.
    let repeat_within = Duration::from_secs(args.dedup_window_secs / 2);

    let watcher = tokio::spawn(watch::watch(
        watch::Keys::connect(&args.database).await?,
        service.url("/metrics"),
        service.child.id(),
        client.clone(),
        counters.clone(),
        latencies.clone(),
        duration,
    ));

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut carry, mut sequence) = (0.0f64, 0u64);
    let mut senders = Vec::new();
    while started.elapsed() < duration {
        tick.tick().await;
        carry += args.rate as f64 / 100.0;
        while carry >= args.batch as f64 {
            carry -= args.batch as f64;
            let tenant = pick(&zipf, rand::rng().random());
            let (ids, repeats) =
                batch_ids(&recent, tenant, args, &mut sequence, repeat_within).await;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                counters.not_sent.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (client, url, key) = (client.clone(), url.clone(), tenants[tenant].1.clone());
            let (counters, latencies, recent) =
                (counters.clone(), latencies.clone(), recent.clone());
            senders.push(tokio::spawn(async move {
                let _permit = permit;
                send(
                    &client, &url, &key, ids, repeats, &counters, &latencies, &recent, tenant,
                )
                .await;
            }));
        }
        senders.retain(|sender| !sender.is_finished());
    }
    for sender in senders {
        sender.await?;
    }
    let minutes = watcher.await?;
    out(format!(
        "load done: {} duplicates sent, {} retries, {} batches not sent (client at {} in \
         flight), {} given up",
        counters.duplicates_sent.load(Ordering::Relaxed),
        counters.retries.load(Ordering::Relaxed),
        counters.not_sent.load(Ordering::Relaxed),
        args.concurrency,
        counters.gave_up.load(Ordering::Relaxed),
    ));
    Ok(Soak {
        minutes,
        fresh: counters.fresh.load(Ordering::Relaxed),
        acked: counters.acked.load(Ordering::Relaxed),
        miscounted: counters.miscounted.load(Ordering::Relaxed),
        not_sent: counters.not_sent.load(Ordering::Relaxed),
        gave_up: counters.gave_up.load(Ordering::Relaxed),
    })
}

/// A batch's ids: fresh ones, and a share repeating the tenant's last accepted batch
/// while that is recent enough to be remembered. Returns the ids and how many repeat.
async fn batch_ids(
    recent: &Recent,
    tenant: usize,
    args: &Args,
    sequence: &mut u64,
    repeat_within: Duration,
) -> (Vec<String>, usize) {
    let mut ids = Vec::with_capacity(args.batch);
    let wanted = (args.batch as f64 * args.duplicates).round() as usize;
    if let Some((last, at)) = recent[tenant].lock().await.as_ref()
        && at.elapsed() < repeat_within
    {
        ids.extend(last.iter().take(wanted).cloned());
    }
    let repeats = ids.len();
    while ids.len() < args.batch {
        *sequence += 1;
        ids.push(format!("t{tenant}-{sequence}"));
    }
    (ids, repeats)
}

/// Sends a batch until it is answered (the same ids each time), and books the answer.
#[allow(clippy::too_many_arguments)]
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: Vec<String>,
    repeats: usize,
    counters: &Counters,
    latencies: &Mutex<Vec<Duration>>,
    recent: &Recent,
    tenant: usize,
) {
    let body = body(&ids);
    for attempt in 0..60 {
        if attempt > 0 {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let sent = Instant::now();
        let Ok(response) = client
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        else {
            continue;
        };
        if response.status() != 202 {
            continue; // 429 at the tenant's cap, 503 while a dependency is away
        }
        latencies.lock().await.push(sent.elapsed());
        let answer: Value = response.json().await.unwrap_or_default();
        let accepted = answer["accepted"].as_u64().unwrap_or(0);
        let fresh = (ids.len() - repeats) as u64;
        counters.acked.fetch_add(accepted, Ordering::Relaxed);
        counters.fresh.fetch_add(fresh, Ordering::Relaxed);
        counters
            .duplicates_sent
            .fetch_add(repeats as u64, Ordering::Relaxed);
        // A retry may find its own earlier attempt stored: only first answers must match.
        if attempt == 0 && accepted != fresh {
            counters.miscounted.fetch_add(1, Ordering::Relaxed);
        }
        // Only its fresh ids: a repeat of a repeat could be older than the window.
        *recent[tenant].lock().await = Some((ids[repeats..].to_vec(), Instant::now()));
        return;
    }
    counters.gave_up.fetch_add(1, Ordering::Relaxed);
}

fn body(ids: &[String]) -> String {
    use std::fmt::Write;
    let mut body = String::with_capacity(16 + ids.len() * 64);
    body.push_str(r#"{"events":["#);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, r#"{{"id":"{id}","metric":"tokens","value":1}}"#);
    }
    body.push_str("]}");
    body
}

/// Cumulative shares of tenants 0..n under a Zipf law with exponent `s`.
fn cumulative_zipf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    weights
        .iter()
        .map(|w| {
            sum += w / total;
            sum
        })
        .collect()
}

fn pick(cumulative: &[f64], uniform: f64) -> usize {
    cumulative
        .partition_point(|share| *share < uniform)
        .min(cumulative.len() - 1)
}

/// Every fresh event answered 202 must be in ClickHouse once and in the tenants' totals
/// once: waits for the relay, then compares the three.
pub async fn check_totals(
    args: &Args,
    service: &Service,
    client: &reqwest::Client,
    tenants: &[(TenantId, String)],
    soak: &Soak,
) -> anyhow::Result<()> {
    let sink = metering::ClickHouseSink::new(&bench::clickhouse_settings(&args.database));
    let waited = Instant::now();
    let in_clickhouse = loop {
        let count: u64 = sink
            .client()
            .query("SELECT count() FROM usage_events FINAL")
            .fetch_one()
            .await?;
        if count >= soak.fresh.max(soak.acked) || waited.elapsed() > Duration::from_secs(600) {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut summaries = 0u64;
    for (_, key) in tenants {
        let summary: Value = client
            .get(service.url("/v1/usage/summary"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        summaries += summary["metrics"]["tokens"]["used"].as_u64().unwrap_or(0);
    }
    let exact = soak.fresh == soak.acked && soak.fresh == in_clickhouse && soak.fresh == summaries;
    out(format!(
        "\nexact totals: fresh events answered 202 {}, acknowledged {}, in ClickHouse {} \
         ({:.1} s after the load), in the tenants' summaries {}: {}",
        soak.fresh,
        soak.acked,
        in_clickhouse,
        waited.elapsed().as_secs_f64(),
        summaries,
        if exact { "equal" } else { "NOT EQUAL" }
    ));
    out(format!(
        "batches whose first answer miscounted their fresh events: {}; batches given up: {}; \
         not sent: {}",
        soak.miscounted, soak.gave_up, soak.not_sent
    ));
    Ok(())
}
