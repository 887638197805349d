//! Invoice-run benchmark: 1,000 tenants with usage in a billing period that has ended,
//! invoiced in one run. Prints the total and where the time went: ClickHouse (usage per
//! period), rating, and Postgres (checks and writes). Stripe is not called by the run:
//! it only stores invoices, so Stripe time is reported as such.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin billing-bench && target/release/billing-bench

use std::time::{Duration, Instant};

use bench::{APP, clickhouse_settings, fresh_database, out, pg_url};
use chrono::Utc;
use clap::Parser;
use metering::ClickHouseSink;
use metering::event::UsageEvent;
use metering::relay::{Relay, RelaySettings};
use saas_core::{BillingCycle, Metric, TenantId, TenantState};
use sqlx::postgres::PgPoolOptions;
use tenancy::Db;
use tenancy::tenants::NewTenant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Events per tenant in the period.
    #[arg(long, default_value_t = 50)]
    events: usize,
    #[arg(long, default_value = "saas_bench_billing")]
    database: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    out(format!(
        "billing-bench: {} tenants, {} events each, one invoice run",
        args.tenants, args.events
    ));
    fresh_database(&args.database).await?;
    let db = Db::from_pool(
        PgPoolOptions::new()
            .max_connections(16)
            .connect(&pg_url(APP, &args.database))
            .await?,
    );
    let sink = ClickHouseSink::new(&clickhouse_settings(&args.database));

    // Every tenant's first period lasts until shortly after the set-up is done.
    let setup = Instant::now();
    let cycle_seconds = 20 + (args.tenants * args.events / 2_000) as u64;
    let plans = ["starter", "pro", "enterprise"];
    let mut ids = Vec::with_capacity(args.tenants);
    {
        let mut tx = db.system_tx("bench setup").await?;
        for index in 0..args.tenants {
            let id = TenantId::new();
            tenancy::tenants::insert(
                &mut tx,
                &NewTenant {
                    id,
                    name: format!("bench tenant {index}"),
                    email: None,
                    state: TenantState::Active,
                    plan_code: plans[index % plans.len()].into(),
                    billing_anchor: Utc::now(),
                    billing_cycle: BillingCycle::Seconds(cycle_seconds),
                    synthetic: false,
                    stripe_customer_id: None,
                    stripe_subscription_id: None,
                },
            )
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
    }
    for (index, id) in ids.iter().enumerate() {
        let now = Utc::now();
        let events: Vec<UsageEvent> = (0..args.events)
            .map(|i| UsageEvent {
                id: format!("b{index}-{i}"),
                metric: Metric::ALL[i % 3],
                value: 10_000 * (1 + (index * 7 + i) as u64 % 1000),
                time: now,
            })
            .collect();
        metering::ledger::ingest(&db, *id, &events, 0, now).await?;
    }
    let relay_settings = RelaySettings {
        batch_size: 10_000,
        idle_wait: Duration::from_millis(20),
        max_backoff: Duration::from_secs(1),
    };
    Relay::new(db.clone(), sink.clone(), relay_settings)
        .drain()
        .await?;
    let setup_took = setup.elapsed();
    let period_end = Duration::from_secs(cycle_seconds).saturating_sub(setup_took);
    out(format!(
        "set-up: {:.1} s; waiting {:.1} s for the period to end",
        setup_took.as_secs_f64(),
        period_end.as_secs_f64()
    ));
    tokio::time::sleep(period_end + Duration::from_secs(1)).await;

    let started = Instant::now();
    let report = billing::invoices::run(
        &db,
        &sink,
        Utc::now(),
        Duration::from_millis(500),
        billing::invoices::Collection::Elsewhere,
    )
    .await?;
    let total = started.elapsed();
    if report.invoices_created != args.tenants || report.failed != 0 {
        anyhow::bail!("expected {} invoices: {report:?}", args.tenants);
    }
    out(format!("invoices created:   {}", report.invoices_created));
    out(format!("total:              {:.2} s", total.as_secs_f64()));
    out(format!(
        "  clickhouse:       {:.2} s",
        report.clickhouse_ms as f64 / 1000.0
    ));
    out(format!(
        "  rating:           {:.3} s",
        report.rating_ms as f64 / 1000.0
    ));
    out(format!(
        "  postgres:         {:.2} s",
        report.postgres_ms as f64 / 1000.0
    ));
    out(
        "  stripe:           not called by the run (invoices are stored; pushing them to Stripe is separate)",
    );
    Ok(())
}
