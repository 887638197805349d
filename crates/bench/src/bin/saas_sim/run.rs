//! One simulation: a fresh deployment (the service as a child process, its own Stripe
//! fake), the population, the traffic, the checks and the report.

use std::time::{Duration, Instant};

use anyhow::Context;
use bench::{OwnLocalstripe, Service, fresh_database, ms, out, percentile};
use reqwest::Method;

use crate::api::{Api, As};
use crate::books::{Books, Tally};
use crate::checks::{self, StripeSource, StripeView};
use crate::{population, rerate, traffic};

const OPERATOR_TOKEN: &str = "saas-sim-operator-token";
const STRIPE_KEY: &str = "sk_test_saas_sim";

pub struct Settings {
    pub tenants: usize,
    pub cycles: u32,
    pub cycle_secs: u64,
    pub concurrency: usize,
    pub decline_share: f64,
    pub seed: u64,
    pub database: String,
}

/// Runs the simulation and prints its report; whether it found no violation.
pub async fn simulate(settings: &Settings) -> anyhow::Result<bool> {
    out(format!(
        "saas-sim: {} tenants, {} cycles of {} s, {} clients at once",
        settings.tenants, settings.cycles, settings.cycle_secs, settings.concurrency
    ));
    fresh_database(&settings.database).await?;
    let stripe = OwnLocalstripe::start().await?;
    let cycle = format!("{}s", settings.cycle_secs);
    let service = Service::start(
        &settings.database,
        &[
            ("SAAS_STRIPE__SECRET_KEY", STRIPE_KEY),
            ("SAAS_STRIPE__API_BASE", &stripe.url),
            ("SAAS_OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("SAAS_BILLING__CYCLE", &cycle),
            ("SAAS_BILLING__CLOSE_GRACE_MS", "1000"),
            ("SAAS_BILLING__RUN_INTERVAL_MS", "500"),
            ("SAAS_SIGNUPS__RATE_PER_MINUTE", "1000000"),
            ("SAAS_HTTP__SENSITIVE_WRITES_PER_MINUTE", "1000000"),
            ("SAAS_WORKERS__JOB_CONCURRENCY", "16"),
            ("SAAS_WORKERS__RELAY_IDLE_MS", "20"),
        ],
    )
    .await?;
    let api = Api::new(service.url(""), OPERATOR_TOKEN.to_owned());
    let books = Books::default();
    let plans = api
        .call("GET /v1/plans", Method::GET, "/v1/plans", As::Anyone, None)
        .await?;
    let plans = rerate::parse_plans(&plans.body)?;

    let started = Instant::now();
    let declining = declining_card(&stripe.url).await?;
    let population = population::sign_up(
        &api,
        &books,
        settings.tenants,
        &declining,
        settings.decline_share,
        settings.concurrency,
        settings.seed,
    )
    .await?;
    let signups_took = started.elapsed();
    out(format!(
        "population: {} tenants active, {} signups ended as their cards say, in {:.1} s",
        population.tenants.len(),
        population.outcomes.checked - population.outcomes.violated,
        signups_took.as_secs_f64()
    ));

    let traffic_started = Instant::now();
    let until =
        traffic_started + Duration::from_secs(settings.cycle_secs * u64::from(settings.cycles));
    let traffic = traffic::run(
        &api,
        &books,
        &population.tenants,
        until,
        settings.concurrency,
        settings.seed,
    )
    .await;
    let traffic_took = traffic_started.elapsed();
    out(format!(
        "traffic: {} batches, {} events acknowledged, {} refused at hard limits, in {:.1} s",
        traffic.batches,
        traffic.events_acknowledged,
        traffic.refused_at_limit,
        traffic_took.as_secs_f64()
    ));

    // Every period that ended is invoiced after the close grace and collected; give it
    // a few cycles' time, then read Stripe's side and check everything.
    tokio::time::sleep(Duration::from_secs(settings.cycle_secs) + Duration::from_secs(2)).await;
    let settle = Duration::from_secs(settings.cycle_secs * 4 + 60);
    checks::wait_until_settled(&api, &books, &population.tenants, settle).await?;
    let source = StripeSource {
        base: stripe.url.clone(),
        key: STRIPE_KEY.to_owned(),
    };
    let (verdict, stripe_view) = checks::verify(
        &api,
        &books,
        &population.tenants,
        &plans,
        &source,
        Duration::from_secs(60),
    )
    .await?;
    let total_took = started.elapsed();

    report(
        &api,
        &books,
        &population,
        &traffic,
        &verdict,
        &stripe_view,
        traffic_took,
        total_took,
        settings,
    );
    let peak = service.peak_memory_mib().unwrap_or(0.0);
    out(format!("service peak memory: {peak:.0} MiB"));
    Ok(books.violations().is_empty())
}

async fn declining_card(stripe: &str) -> anyhow::Result<String> {
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{stripe}/v1/payment_methods"))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[
            ("type", "card"),
            ("card[number]", "4000000000000341"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ])
        .send()
        .await?
        .json()
        .await?;
    Ok(created["id"]
        .as_str()
        .context("a payment method id")?
        .to_owned())
}

#[allow(clippy::too_many_arguments)]
fn report(
    api: &Api,
    books: &Books,
    population: &population::Population,
    traffic: &traffic::TrafficTally,
    verdict: &checks::Verdict,
    stripe: &StripeView,
    traffic_took: Duration,
    total_took: Duration,
    settings: &Settings,
) {
    let stats = api.stats();
    let requests: usize = stats.values().map(|s| s.latencies.len()).sum();
    let server_errors: u64 = stats.values().map(|s| s.server_errors).sum();
    out("");
    out("== saas-sim report ==");
    out(format!(
        "run: {:.1} s in all; traffic {:.1} s over {} cycles of {} s",
        total_took.as_secs_f64(),
        traffic_took.as_secs_f64(),
        settings.cycles,
        settings.cycle_secs
    ));
    out(format!(
        "requests: {requests} ({:.0} per hour sustained over the traffic phase)",
        requests as f64 / traffic_took.as_secs_f64().max(0.001) * 3600.0
    ));
    out("latency per endpoint (p50 / p99 ms, count, 5xx):");
    for (endpoint, stat) in stats {
        let mut samples = stat.latencies.clone();
        out(format!(
            "  {endpoint:<34} {:>8.1} / {:>8.1}  {:>8}  {}",
            ms(percentile(&mut samples, 50.0)),
            ms(percentile(&mut samples, 99.0)),
            stat.latencies.len(),
            stat.server_errors
        ));
    }
    out("invariants (checked, violated):");
    let line = |name: &str, tally: Tally| {
        out(format!(
            "  {name:<58} {:>8} {:>6}",
            tally.checked, tally.violated
        ));
    };
    line("signups ended as their cards say", population.outcomes);
    line("retried batches counted once", traffic.retries);
    line("in-batch twins counted once", traffic.twins);
    line("isolation probes refused", traffic.isolation);
    line(
        "acknowledged usage = invoiced usage (tenant, period)",
        verdict.usage_invoiced_once,
    );
    line("invoice total = independent re-rating", verdict.rerated);
    line("Stripe invoice = ours, paid once", verdict.stripe_equal);
    line(
        "hard limits held (tenant, period, metric)",
        verdict.limits_held,
    );
    line("current usage = books (tenant)", verdict.current_usage);
    line(
        "every ended period invoiced once (tenant)",
        verdict.every_period_once,
    );
    line("audit chain verifies", verdict.audit_chain_valid);
    line(
        "no 5xx answered",
        Tally {
            checked: requests as u64,
            violated: server_errors,
        },
    );
    out(format!(
        "invoices: {} of ours, {} at Stripe",
        verdict.invoices, stripe.invoices
    ));
    let violations = books.violations();
    if server_errors > 0 {
        books.violation(format!("{server_errors} requests answered 5xx"));
    }
    let violations = violations.len() + usize::from(server_errors > 0);
    out(format!("violations: {violations}"));
}
