//! Readiness benchmark: how long a full live `/readiness` run takes on the local stack.
//! Starts `saas serve` (a separate process) with result reuse off, asks `/readiness`
//! several times in a row, and prints the duration of each run, p50 and max, and the
//! last run's summary.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin saas --bin readiness-bench && target/release/readiness-bench

use std::time::{Duration, Instant};

use anyhow::bail;
use bench::{Service, fresh_database, out, percentile};
use clap::Parser;

/// A live run needs the operator.
const BENCH_OPERATOR_TOKEN: &str = "readiness-bench-operator-token";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    runs: usize,
    #[arg(long, default_value = "saas_bench_readiness")]
    database: String,
    #[arg(long, default_value = "http://127.0.0.1:8420")]
    stripe_api_base: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    out(format!("readiness-bench: {} live runs", args.runs));
    fresh_database(&args.database).await?;
    let service = Service::start(
        &args.database,
        &[
            ("SAAS_STRIPE__SECRET_KEY", "sk_test_readiness_bench"),
            ("SAAS_STRIPE__API_BASE", &args.stripe_api_base),
            ("SAAS_READINESS__CACHE_MS", "0"),
            ("SAAS_OPERATOR_TOKEN", BENCH_OPERATOR_TOKEN),
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let mut durations = Vec::new();
    let mut last = String::new();
    for run in 1..=args.runs {
        let started = Instant::now();
        let response = client
            .get(service.url("/readiness"))
            .bearer_auth(BENCH_OPERATOR_TOKEN)
            .header("accept", "text/plain")
            .send()
            .await?;
        let took = started.elapsed();
        let status = response.status();
        last = response.text().await?;
        if !status.is_success() {
            bail!("run {run}: {status}\n{last}");
        }
        out(format!("run {run:>2}: {:.3} s", took.as_secs_f64()));
        durations.push(took);
    }
    let max = durations.iter().copied().max().unwrap_or(Duration::ZERO);
    out(format!(
        "full live run:  p50 {:.3} s   max {:.3} s   (goal: under 2 s)",
        percentile(&mut durations, 50.0).as_secs_f64(),
        max.as_secs_f64()
    ));
    out(format!("last run:\n{}", last.trim_end()));
    Ok(())
}
