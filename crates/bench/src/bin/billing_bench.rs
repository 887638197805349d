//! Invoice-run benchmark: 1,000 tenants, each a Stripe customer with a card, with usage
//! in a billing period that has ended. One invoice run makes their invoices (timed
//! apart: ClickHouse, rating, Postgres); then each is collected through Stripe (composed
//! and charged), with as many collections at once as the job worker runs by default,
//! and that is timed as Stripe time, with the Stripe requests it took per invoice.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin billing-bench && target/release/billing-bench

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{APP, OwnLocalstripe, clickhouse_settings, fresh_database, out, pg_url};
use chrono::Utc;
use clap::Parser;
use futures_util::StreamExt;
use metering::ClickHouseSink;
use metering::event::UsageEvent;
use metering::relay::{Relay, RelaySettings};
use payments::{Attempt, CustomerDetails, PaymentProvider, StripeProvider};
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
    /// Collections run at once (the job worker's default concurrency).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// localstripe takes any `sk_test_` key.
const STRIPE_KEY: &str = "sk_test_bench";

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

    let plans = ["starter", "pro", "enterprise"];
    let localstripe = OwnLocalstripe::start().await?;
    let stripe: Arc<StripeProvider> = Arc::new(StripeProvider::new(
        STRIPE_KEY,
        &localstripe.url,
        Duration::from_secs(20),
    )?);
    let stripe_setup = Instant::now();
    let mut stripe_ids = Vec::with_capacity(args.tenants);
    {
        for index in 0..args.tenants {
            let customer = stripe
                .ensure_customer(
                    &CustomerDetails {
                        reference: format!("bench-{}", TenantId::new()),
                        email: format!("bench{index}@example.com"),
                        name: format!("bench tenant {index}"),
                    },
                    Attempt::First,
                )
                .await?;
            stripe
                .ensure_default_payment_method(&customer, "pm_card_visa", Attempt::First)
                .await?;
            stripe_ids.push(customer);
        }
    }
    out(format!(
        "stripe set-up: {} customers with a card in {:.1} s",
        args.tenants,
        stripe_setup.elapsed().as_secs_f64()
    ));

    // Every tenant's first period lasts until shortly after the set-up is done.
    let setup = Instant::now();
    let cycle_seconds = 20 + (args.tenants * args.events / 2_000) as u64;
    let mut ids = Vec::with_capacity(args.tenants);
    {
        let mut tx = db.system_tx("bench setup").await?;
        for (index, customer) in stripe_ids.iter().enumerate() {
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
                    stripe_customer_id: Some(customer.clone()),
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
        ..RelaySettings::default()
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
        billing::invoices::Collection::Stripe,
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

    // Collection through Stripe, as the job worker does it.
    let drafts: Vec<(TenantId, uuid::Uuid)> = {
        let mut tx = db.system_tx("bench drafts").await?;
        let rows: Vec<(uuid::Uuid, uuid::Uuid)> =
            sqlx::query_as("SELECT tenant_id, id FROM invoices WHERE status = 'draft'")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(tenant, invoice)| (TenantId::from_uuid(tenant), invoice))
            .collect()
    };
    let collector = billing::collection::Collector::new(
        db.clone(),
        stripe.clone() as Arc<dyn PaymentProvider>,
        billing::collection::DunningSchedule {
            retries: vec![Duration::from_secs(86_400)],
        },
    );
    let lines: i64 = {
        let mut tx = db.system_tx("bench lines").await?;
        let lines = sqlx::query_scalar(
            "SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
             WHERE i.status = 'draft' AND l.amount <> 0",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        lines
    };
    let requests_before = localstripe.requests();
    let started = Instant::now();
    let outcomes: Vec<_> = futures_util::stream::iter(drafts.iter().map(|(tenant, invoice)| {
        let collector = collector.clone();
        async move { collector.collect(*tenant, *invoice).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect()
    .await;
    let stripe_time = started.elapsed();
    let requests = localstripe.requests() - requests_before;
    let failures = outcomes.iter().filter(|o| o.is_err()).count();
    let paid: i64 = {
        let mut tx = db.system_tx("bench paid").await?;
        let paid = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'paid'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        paid
    };
    if failures != 0 || paid != args.tenants as i64 {
        anyhow::bail!(
            "collection: {failures} failed, {paid} of {} paid",
            args.tenants
        );
    }
    out(format!(
        "  stripe:           {:.2} s to push and charge {} invoices, {} at a time ({:.1} ms each)",
        stripe_time.as_secs_f64(),
        drafts.len(),
        args.concurrency,
        stripe_time.as_secs_f64() * 1000.0 / drafts.len().max(1) as f64 * args.concurrency as f64
    ));
    let invoices = drafts.len().max(1) as f64;
    out(format!(
        "  stripe calls:     {:.2} per invoice for {:.2} lines with an amount per invoice \
         (goal: at most lines + 3)",
        requests as f64 / invoices,
        lines as f64 / invoices
    ));
    out(format!(
        "run + collection:   {:.2} s",
        (total + stripe_time).as_secs_f64()
    ));
    Ok(())
}
