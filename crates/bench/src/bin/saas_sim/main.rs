//! `saas-sim`: the whole business at once, driven only through the public API, Stripe's
//! (the fake's) and process signals, with books of its own checked against the service
//! at the end.
//!
//! Tenants sign up on every plan (some with cards that decline), meter usage with a
//! skewed load (a few hot tenants, many small; retries, in-batch twins, late timestamps,
//! bursts against hard limits) through several short billing cycles, probe each other's
//! data, read their mail (confirming their addresses, hearing from win-back campaigns),
//! and live their lives (keys rotated, suspensions, plan changes, cards that start
//! declining, erasures), while faults strike on a printed schedule. Then every invoice is
//! compared with the simulator's books, with ClickHouse and with a re-rating written here
//! from the published plan terms, every Stripe invoice with ours, what erasures left is
//! searched for, and the audit chain is verified. Exits 1 on any violation.
//!
//! `cargo build --release --bin saas --bin saas-sim && target/release/saas-sim`
//! (`--profile short` for the CI run).

mod api;
mod books;
mod checks;
mod dunning;
mod erasure;
mod erasure_checks;
mod faults;
mod life;
mod mail;
mod plan_changes;
mod population;
mod report;
mod rerate;
mod rotation;
mod run;
mod settling;
mod stripe_view;
mod suspensions;
mod traffic;
mod usage_store;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    /// About 100 tenants, 3 cycles: a couple of minutes.
    Short,
    /// 1,000 tenants, 5 cycles.
    Full,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "full")]
    profile: Profile,
    /// Tenants to sign up (default by profile).
    #[arg(long)]
    tenants: Option<usize>,
    /// Billing cycles to run through (default by profile).
    #[arg(long)]
    cycles: Option<u32>,
    /// Length of a billing cycle, in seconds (default by profile: 12 short, 60 full, so
    /// that collection at the Stripe fake keeps up with a thousand tenants).
    #[arg(long)]
    cycle_secs: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Share of paid signups whose card declines at signup.
    #[arg(long, default_value_t = 0.05)]
    decline_share: f64,
    /// Share of tenants that never confirm their address.
    #[arg(long, default_value_t = 0.1)]
    unconfirmed_share: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value = "saas_sim")]
    database: String,
    /// Rounds of every fault kind during the traffic (default by profile: 1 short, 3
    /// full; 0 for none).
    #[arg(long)]
    fault_rounds: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tenants, cycles, cycle_secs, fault_rounds) = match args.profile {
        Profile::Short => (100, 3, 12, 1),
        Profile::Full => (1_000, 5, 60, 3),
    };
    let settings = run::Settings {
        tenants: args.tenants.unwrap_or(tenants),
        cycles: args.cycles.unwrap_or(cycles),
        cycle_secs: args.cycle_secs.unwrap_or(cycle_secs),
        concurrency: args.concurrency,
        decline_share: args.decline_share,
        unconfirmed_share: args.unconfirmed_share,
        seed: args.seed,
        database: args.database,
        fault_rounds: args.fault_rounds.unwrap_or(fault_rounds),
    };
    let clean = run::simulate(&settings).await?;
    std::process::exit(if clean { 0 } else { 1 });
}
