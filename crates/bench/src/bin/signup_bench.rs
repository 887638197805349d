//! Onboarding benchmark: 100 signups, 10 at a time, against `saas serve` (a separate
//! process) on the local stack with its real payment provider (localstripe). Each signup
//! is timed from its POST to the first read that shows it `completed`; prints p50, p95
//! and max seconds.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin saas --bin signup-bench && target/release/signup-bench

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::{Service, fresh_database, out, percentile};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    signups: usize,
    /// Signups in flight at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// How often a signer-up polls its signup.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    #[arg(long, default_value = "saas_bench_signups")]
    database: String,
    /// The Stripe-compatible server of the local stack.
    #[arg(long, default_value = "http://127.0.0.1:8420")]
    stripe_api_base: String,
}

/// Paid and free plans in turn, so the figure covers the payment path.
const PLANS: [(&str, Option<&str>); 4] = [
    ("starter", Some("pm_card_visa")),
    ("pro", Some("pm_card_visa")),
    ("enterprise", Some("pm_card_visa")),
    ("free", None),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    out(format!(
        "signup-bench: {} signups, {} at a time, plans {:?}",
        args.signups,
        args.concurrency,
        PLANS.map(|(plan, _)| plan)
    ));
    fresh_database(&args.database).await?;
    let service = Service::start(
        &args.database,
        &[
            ("SAAS_STRIPE__SECRET_KEY", "sk_test_signup_bench"),
            ("SAAS_STRIPE__API_BASE", &args.stripe_api_base),
            ("SAAS_SIGNUPS__RATE_PER_MINUTE", "100000"),
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let run = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, base) = (client.clone(), next.clone(), service.url(""));
        let (total, poll) = (args.signups, Duration::from_millis(args.poll_ms));
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(mine);
                }
                mine.push(one_signup(&client, &base, n, poll).await?);
            }
        }));
    }
    let mut times = Vec::new();
    for worker in workers {
        times.extend(worker.await??);
    }
    let wall = run.elapsed();
    let max = times.iter().copied().max().unwrap_or_default();
    out(format!("signups completed:     {}", times.len()));
    out(format!(
        "POST to completed:     p50 {:.3} s   p95 {:.3} s   max {:.3} s",
        percentile(&mut times, 50.0).as_secs_f64(),
        percentile(&mut times, 95.0).as_secs_f64(),
        max.as_secs_f64()
    ));
    out(format!(
        "throughput:            {:.1} signups/s ({:.1} s wall)",
        times.len() as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    ));
    out(format!(
        "service peak memory:   {:.1} MiB",
        service.peak_memory_mib().unwrap_or(f64::NAN)
    ));
    Ok(())
}

/// Signs up and polls until the signup is `completed`; its time from POST to then.
async fn one_signup(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    poll: Duration,
) -> anyhow::Result<Duration> {
    let (plan, payment_method) = PLANS[n % PLANS.len()];
    let unique = format!("{n}-{}", std::process::id());
    let mut body = json!({
        "email": format!("bench+{unique}@example.com"),
        "company": format!("Bench Company {unique}"),
        "plan": plan,
    });
    if let Some(pm) = payment_method {
        body["payment_method"] = json!(pm);
    }
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/signups"))
        .json(&body)
        .send()
        .await?;
    if response.status() != 202 {
        bail!(
            "signup {n}: {} {}",
            response.status(),
            response.text().await?
        );
    }
    let created: Value = response.json().await?;
    let id = created["id"].as_str().context("no id")?.to_owned();
    let token = created["signup_token"]
        .as_str()
        .context("no token")?
        .to_owned();
    let deadline = started + Duration::from_secs(120);
    loop {
        let signup: Value = client
            .get(format!("{base}/v1/signups/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        match signup["status"].as_str() {
            Some("completed") => return Ok(started.elapsed()),
            Some("failed") => bail!("signup {n} ({plan}) failed: {signup}"),
            _ if Instant::now() > deadline => bail!("signup {n} not done in 120 s: {signup}"),
            _ => tokio::time::sleep(poll).await,
        }
    }
}
