//! Usage from every tenant for the length of the run, as clients send it: skewed across
//! tenants, with retries of whole batches, twins inside a batch, late timestamps and
//! bursts against hard limits. Isolation probes run alongside.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, As};
use crate::books::{Books, MetricUsage, Tally, Tenant, instant};
use crate::rerate::METRICS;

#[derive(Debug, Default, Clone, Copy)]
pub struct TrafficTally {
    pub batches: u64,
    pub events_acknowledged: u64,
    /// Batches refused whole at a hard limit (429 `quota_exceeded`).
    pub refused_at_limit: u64,
    /// Attempts refused while too many of the tenant's batches were in flight (429
    /// `rate_limited`), and sent again.
    pub throttled: u64,
    /// Batches of suspended tenants, refused (403 `tenant_suspended`).
    pub refused_suspended: u64,
    /// Batches stored by an attempt whose answer never came (a fault cut it), found
    /// stored whole when the client sent them again.
    pub answers_lost: u64,
    /// Retried batches, each answered with every event a duplicate.
    pub retries: Tally,
    /// Batches with a twin inside, the twin counted once.
    pub twins: Tally,
    pub isolation: Tally,
}

/// Sends usage until `until`, from `workers` concurrent clients.
pub async fn run(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    until: Instant,
    workers: usize,
    seed: u64,
) -> TrafficTally {
    let total_weight: f64 = tenants.iter().map(|t| t.weight).sum();
    let next_id = AtomicU64::new(0);
    let clients = (0..workers).map(|worker| {
        let next_id = &next_id;
        async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (worker as u64 + 1));
            let mut tally = TrafficTally::default();
            while Instant::now() < until {
                let tenant = pick(tenants, total_weight, &mut rng);
                if worker == 0 && tenants.len() > 1 {
                    probe_isolation(api, books, tenants, &mut rng, &mut tally.isolation).await;
                }
                send_batch(api, books, tenant, next_id, &mut rng, &mut tally).await;
            }
            tally
        }
    });
    let tallies = futures_util::future::join_all(clients).await;
    tallies
        .into_iter()
        .fold(TrafficTally::default(), |mut sum, t| {
            sum.batches += t.batches;
            sum.events_acknowledged += t.events_acknowledged;
            sum.refused_at_limit += t.refused_at_limit;
            sum.refused_suspended += t.refused_suspended;
            sum.answers_lost += t.answers_lost;
            for (into, from) in [
                (&mut sum.retries, t.retries),
                (&mut sum.twins, t.twins),
                (&mut sum.isolation, t.isolation),
            ] {
                into.checked += from.checked;
                into.violated += from.violated;
            }
            sum
        })
}

fn pick<'a>(tenants: &'a [Tenant], total_weight: f64, rng: &mut StdRng) -> &'a Tenant {
    let mut point = rng.random::<f64>() * total_weight;
    for tenant in tenants {
        point -= tenant.weight;
        if point <= 0.0 {
            return tenant;
        }
    }
    &tenants[tenants.len() - 1]
}

async fn send_batch(
    api: &Api,
    books: &Books,
    tenant: &Tenant,
    next_id: &AtomicU64,
    rng: &mut StdRng,
    tally: &mut TrafficTally,
) {
    let size = rng.random_range(1..=20);
    // Free tenants now and then burst against their hard limits.
    let burst = tenant.plan == "free" && rng.random_bool(0.1);
    let late = (chrono::Utc::now() - chrono::TimeDelta::minutes(5)).to_rfc3339();
    let mut events: Vec<Value> = (0..size)
        .map(|_| {
            let metric = METRICS[rng.random_range(0..METRICS.len())];
            let value: u64 = match (metric, burst) {
                ("queries", true) => 3_000,
                ("queries", false) => rng.random_range(1..=50),
                ("tokens", _) => rng.random_range(1..=5_000),
                _ => rng.random_range(1..=1_000_000),
            };
            let mut event = json!({
                "id": format!("sim-{}", next_id.fetch_add(1, Ordering::Relaxed)),
                "metric": metric,
                "value": value,
            });
            if rng.random_bool(0.2) {
                event["timestamp"] = json!(late);
            }
            event
        })
        .collect();
    let unique = events.len() as u64;
    let twin = rng.random_bool(0.05);
    if twin {
        events.push(events[0].clone());
    }
    let body = json!({ "events": events });
    // No change of the tenant's life takes effect while its batch is in flight. While
    // one is under way, this client moves on to another tenant rather than wait.
    let Ok(_gate) = tenant.live.gate.try_read() else {
        tokio::task::yield_now().await;
        return;
    };
    let (suspended, erased, declining) = {
        let state = tenant.live.state();
        (state.suspended, state.erased, state.declining)
    };
    if erased {
        return; // it left: its key is revoked, and its client stopped
    }
    let Some(sent) = ingest_until_answered(api, books, tenant, &body).await else {
        return;
    };
    let answer = sent.answer;
    tally.batches += 1;
    tally.throttled += sent.throttled;
    match answer.status.as_u16() {
        403 if (suspended || declining) && answer.code() == "tenant_suspended" => {
            tally.refused_suspended += 1;
        }
        _ if suspended => books.violation(format!(
            "{}: a suspended tenant's batch answered {} {}",
            tenant.tenant_id, answer.status, answer.body
        )),
        202 => {
            let accepted = answer.body["accepted"].as_u64().unwrap_or(0);
            let duplicates = answer.body["duplicates"].as_u64().unwrap_or(0);
            // A batch is all or nothing: new here, or stored whole by an attempt whose
            // answer was lost (then every event is a duplicate).
            let stored_before = sent.attempts > 1 && accepted == 0;
            let fresh = if stored_before {
                duplicates == events.len() as u64
            } else {
                accepted == unique && (!twin || duplicates == 1)
            };
            if !fresh {
                books.violation(format!(
                    "{}: {accepted} of {unique} new events accepted, {duplicates} duplicates \
                     (attempt {})",
                    tenant.tenant_id, sent.attempts
                ));
            }
            tally.answers_lost += u64::from(stored_before);
            if twin && !stored_before {
                tally.twins.check(duplicates == 1);
            }
            let metrics = batch_usage(&events[..events.len() - usize::from(twin)]);
            let period = answer.body["period_start"].as_str().unwrap_or_default();
            let candidates = if stored_before {
                periods_since(&answer.body, sent.first_sent)
            } else {
                vec![period.to_owned()]
            };
            books.acknowledge_batch(&tenant.tenant_id, candidates, metrics);
            tally.events_acknowledged += unique;
            // A client that lost the answer sends the batch again.
            if rng.random_bool(0.1)
                && let Some(again) = ingest_until_answered(api, books, tenant, &body).await
            {
                let again = again.answer;
                let counted_once = again.status == 202
                    && again.body["accepted"] == json!(0)
                    && again.body["duplicates"] == json!(events.len());
                if !tally.retries.check(counted_once) {
                    books.violation(format!(
                        "{}: a retried batch answered {} {}",
                        tenant.tenant_id, again.status, again.body
                    ));
                }
            }
        }
        429 if answer.code() == "quota_exceeded" => tally.refused_at_limit += 1,
        status => books.violation(format!(
            "{}: a valid batch answered {status} {}",
            tenant.tenant_id, answer.body
        )),
    }
}

/// Per metric, the units of `events`.
fn batch_usage(events: &[Value]) -> MetricUsage {
    let mut usage = MetricUsage::new();
    for event in events {
        *usage
            .entry(event["metric"].as_str().unwrap_or_default().to_owned())
            .or_default() += event["value"].as_u64().unwrap_or(0);
    }
    usage
}

/// The starts of the periods from the one current at `since` to the one `answer` names:
/// where a batch stored by an earlier attempt, whose answer was lost, may have been
/// counted.
fn periods_since(answer: &Value, since: DateTime<Utc>) -> Vec<String> {
    let at = |field: &str| answer[field].as_str().and_then(instant);
    let (Some(start), Some(end)) = (at("period_start"), at("period_end")) else {
        return Vec::new();
    };
    let cycle = end - start;
    let mut periods = vec![start];
    while cycle > TimeDelta::zero() && periods[periods.len() - 1] > since {
        periods.push(periods[periods.len() - 1] - cycle);
    }
    periods
        .into_iter()
        .map(|p| p.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .collect()
}

/// An answer, after however many attempts it took.
struct Sent {
    answer: crate::api::Answer,
    attempts: u32,
    /// Attempts refused because too many of the tenant's batches were in flight.
    throttled: u64,
    first_sent: DateTime<Utc>,
}

/// How long a client keeps sending a batch that gets no answer (or a 5xx), as a client
/// that must not lose usage would: longer than any injected fault lasts.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);
/// The `Retry-After` of a batch refused while too many of its tenant's were in flight.
const RETRY_AFTER_THROTTLED: Duration = Duration::from_secs(1);

/// Sends the batch until the service gives a definite answer (not a 5xx, not a broken
/// connection, not a 429 `rate_limited`, which asks to send it again after
/// `Retry-After`), with the same event ids every time.
async fn ingest_until_answered(
    api: &Api,
    books: &Books,
    tenant: &Tenant,
    body: &Value,
) -> Option<Sent> {
    let first_sent = Utc::now();
    let started = Instant::now();
    let (mut pause, mut throttled) = (Duration::from_millis(50), 0);
    for attempts in 1.. {
        match ingest(api, tenant, body).await {
            Ok(answer) if answer.status == 429 && answer.code() == "rate_limited" => {
                throttled += 1;
                tokio::time::sleep(RETRY_AFTER_THROTTLED).await;
                continue;
            }
            Ok(answer) if !answer.status.is_server_error() => {
                return Some(Sent {
                    answer,
                    attempts,
                    throttled,
                    first_sent,
                });
            }
            _ => {}
        }
        if started.elapsed() > GIVE_UP_AFTER {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    books.violation(format!(
        "{}: a batch got no answer in {} s",
        tenant.tenant_id,
        GIVE_UP_AFTER.as_secs()
    ));
    None
}

async fn ingest(api: &Api, tenant: &Tenant, body: &Value) -> anyhow::Result<crate::api::Answer> {
    api.call(
        "POST /v1/usage/events",
        Method::POST,
        "/v1/usage/events",
        As::Key(&tenant.key()),
        Some(body),
    )
    .await
}

/// One tenant reaches for another's key, signup and invoices: every answer must be a
/// refusal, and the other's key must still work.
async fn probe_isolation(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    rng: &mut StdRng,
    tally: &mut Tally,
) {
    let a = &tenants[rng.random_range(0..tenants.len())];
    let b = &tenants[rng.random_range(0..tenants.len())];
    if a.tenant_id == b.tenant_id || a.erased() || b.erased() {
        return;
    }
    let mut attempts = vec![
        (
            "DELETE /v1/api-keys/{id}",
            Method::DELETE,
            format!("/v1/api-keys/{}", b.key_id()),
        ),
        (
            "GET /v1/signups/{id}",
            Method::GET,
            format!("/v1/signups/{}", b.signup_id),
        ),
        (
            "GET /v1/tenant/transitions/{id}",
            Method::GET,
            format!(
                "/v1/tenant/transitions/{}",
                b.signup_id.replace("sgn_", "trn_")
            ),
        ),
    ];
    if let Ok(theirs) = api
        .call(
            "GET /v1/invoices",
            Method::GET,
            "/v1/invoices",
            As::Key(&b.key()),
            None,
        )
        .await
        && let Some(id) = theirs.body["invoices"][0]["id"].as_str()
    {
        attempts.push((
            "GET /v1/invoices/{id}",
            Method::GET,
            format!("/v1/invoices/{id}"),
        ));
    }
    for (endpoint, method, path) in attempts {
        let Ok(answer) = api
            .call(endpoint, method, &path, As::Key(&a.key()), None)
            .await
        else {
            continue;
        };
        if answer.status.is_server_error() {
            continue; // a fault in force: neither a refusal nor a leak
        }
        if !tally.check(!answer.status.is_success()) {
            books.violation(format!(
                "{} reached {path} of {}: {} {}",
                a.tenant_id, b.tenant_id, answer.status, answer.body
            ));
        }
    }
    if let Ok(me) = api
        .call(
            "GET /v1/tenant",
            Method::GET,
            "/v1/tenant",
            As::Key(&b.key()),
            None,
        )
        .await
        && !me.status.is_server_error()
        && !tally.check(me.status == 200 && me.body["id"] == json!(b.tenant_id))
    {
        books.violation(format!(
            "{}'s key was touched by {}",
            b.tenant_id, a.tenant_id
        ));
    }
    // Spaced, so that usage stays most of the load.
    tokio::time::sleep(Duration::from_millis(20)).await;
}
