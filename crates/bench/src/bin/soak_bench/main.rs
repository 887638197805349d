//! Sustained-load benchmark: a fixed offered rate for many minutes, with duplicates, and
//! per-minute figures that must level off; then a calm tenant beside a hot one; then
//! reads of one tenant holding tens of millions of events.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin saas --bin soak-bench && target/release/soak-bench
//!
//! The service runs with a dedup window and ledger slots shortened (by configuration,
//! as an operator could) so that retention runs many times within the run.

mod big_tenant;
mod hot;
mod load;
mod watch;

use std::time::Duration;

use bench::{Service, fresh_database};
use clap::Parser;

#[derive(Parser, Clone)]
pub struct Args {
    /// Events offered per second.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 1_000)]
    pub tenants: usize,
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Share of events that repeat an id the tenant sent moments before.
    #[arg(long, default_value_t = 0.05)]
    pub duplicates: f64,
    /// Zipf exponent of the tenants' shares of the load.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Requests in flight at most; an offered batch finding none free is counted as not
    /// sent.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 120)]
    pub dedup_window_secs: u64,
    #[arg(long, default_value_t = 30)]
    pub ledger_slot_secs: u64,
    /// Events of the one big tenant whose reads are timed (0: skip).
    #[arg(long, default_value_t = 20_000_000)]
    pub big_tenant_events: u64,
    /// Batches the hot tenant keeps in flight beside the calm one (0: skip).
    #[arg(long, default_value_t = 400)]
    pub hot_batches: usize,
    #[arg(long, default_value = "saas_soak")]
    pub database: String,
}

pub fn out(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    out(format!(
        "soak-bench: {} events/s offered to {} tenants (Zipf {}), batches of {}, {:.0}% \
         duplicates, {} min; dedup window {} s, ledger slots {} s",
        args.rate,
        args.tenants,
        args.zipf,
        args.batch,
        args.duplicates * 100.0,
        args.minutes,
        args.dedup_window_secs,
        args.ledger_slot_secs
    ));
    fresh_database(&args.database).await?;
    let tenants = bench::create_tenants(&args.database, args.tenants).await?;
    let window = args.dedup_window_secs.to_string();
    let slot = args.ledger_slot_secs.to_string();
    let service = Service::start(
        &args.database,
        &[
            ("SAAS_WORKERS__DEDUP_WINDOW_SECS", &window),
            ("SAAS_WORKERS__LEDGER_SLOT_SECS", &slot),
            // The hot tenant phase needs its batches admitted a few at a time, not one
            // client's worth: the default cap.
        ],
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(60))
        .build()?;

    let soak = load::run(&args, &service, &client, &tenants).await?;
    watch::report(&soak.minutes);
    load::check_totals(&args, &service, &client, &tenants, &soak).await?;

    if args.hot_batches > 0 {
        hot::run(&args, &service, &client).await?;
    }
    if args.big_tenant_events > 0 {
        big_tenant::run(&args, &service, &client).await?;
    }
    out("\nburst ingest: run target/release/ingest-bench (goal: at least 70,000 events/s)".into());
    Ok(())
}
