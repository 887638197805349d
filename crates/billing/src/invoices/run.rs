//! Invoice runs: every tenant whose billing period has ended gets exactly one invoice
//! closing it, composed (see [`crate::period_invoice`]) from the period's usage in
//! ClickHouse.
//!
//! A period is invoiced once a grace time after its end has passed (for clocks that
//! disagree), it is closed to usage with every batch still on its way into it committed
//! (see [`metering::periods`]), and the relay has copied all of its events to
//! ClickHouse (checked against the ledger, per tenant). The invoice and its lines are written in one
//! transaction under the unique key (tenant, kind, period start): a run killed half-way
//! is simply run again, and two runs at once cannot make two invoices. Synthetic tenants
//! (readiness probes) are never billed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use metering::{ClickHouseSink, SinkError};
use saas_core::{BillingPeriod, Metric, TenantId, TenantState};
use serde::Serialize;
use tenancy::tenants::{Tenant, TenantQuery};
use tenancy::{Db, StoreError};
use uuid::Uuid;

use super::store::{InvoiceKind, NewInvoice, store};
use crate::period_invoice::{ComposeError, NextPeriod, compose};
use crate::rating::RatingError;

/// How far back a run looks for periods that were never invoiced.
const MAX_PERIODS_BACK: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Usage(#[from] SinkError),
}

impl From<sqlx::Error> for RunError {
    fn from(error: sqlx::Error) -> Self {
        RunError::Store(error.into())
    }
}

/// What a run did, and where its time went.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RunReport {
    pub run_id: Uuid,
    pub tenants_checked: usize,
    pub invoices_created: usize,
    /// Periods invoiced already (by an earlier or a concurrent run).
    pub already_invoiced: usize,
    /// Periods left for a later run: their events are not all in ClickHouse yet.
    pub waiting_for_relay: usize,
    /// Periods left for a later run: a batch was still being metered into them.
    pub waiting_for_ingest: usize,
    /// Tenants that could not be rated (a plan without a price, an overflow).
    pub failed: usize,
    pub clickhouse_ms: u64,
    pub rating_ms: u64,
    pub postgres_ms: u64,
    pub total_ms: u64,
}

/// Who collects the invoices a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// Tenants with a Stripe customer: drafts, pushed and charged by collection jobs.
    Stripe,
    /// No payment provider configured: invoices are open for collection elsewhere.
    Elsewhere,
}

/// Invoices every period that ended at least `grace` before `now`.
pub async fn run(
    db: &Db,
    sink: &ClickHouseSink,
    now: DateTime<Utc>,
    grace: Duration,
    collection: Collection,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let mut report = RunReport {
        run_id: Uuid::now_v7(),
        ..RunReport::default()
    };
    let closed_before = now - chrono::TimeDelta::from_std(grace).unwrap_or_default();
    let mut timings = Timings::default();
    let mut after: Option<TenantId> = None;
    loop {
        let page = {
            let mut tx = db.system_tx("invoice run tenants").await?;
            let query = TenantQuery {
                state: None,
                after,
                limit: 500,
                // Readiness probes are never billed.
                include_synthetic: false,
            };
            let page = tenancy::tenants::list(&mut tx, &query).await?;
            tx.commit().await?;
            page
        };
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        // Erased tenants have no usage left to bill; provisioning ones no period yet.
        let billable = page.into_iter().filter(|t| {
            !t.synthetic && !matches!(t.state, TenantState::Provisioning | TenantState::Deleted)
        });
        for tenant in billable {
            report.tenants_checked += 1;
            invoice_tenant(
                db,
                sink,
                &tenant,
                closed_before,
                collection,
                &mut report,
                &mut timings,
            )
            .await?;
        }
    }
    report.clickhouse_ms = millis(timings.clickhouse);
    report.rating_ms = millis(timings.rating);
    report.postgres_ms = millis(timings.postgres);
    report.total_ms = millis(started.elapsed());
    metrics::counter!("invoices_created_total").increment(report.invoices_created as u64);
    tracing::info!(run = %report.run_id, created = report.invoices_created,
        waiting_for_relay = report.waiting_for_relay,
        waiting_for_ingest = report.waiting_for_ingest, total_ms = report.total_ms,
        "invoice run done");
    Ok(report)
}

/// Invoices the tenant's ended periods that have no invoice yet, oldest first. Each
/// period's invoice bills the next one in advance, and a run may die at any point: in
/// this order what a dead run leaves is always finished from where it stopped, and a
/// later period is never invoiced while an earlier one waits (for the relay, or for a
/// rating fix).
async fn invoice_tenant(
    db: &Db,
    sink: &ClickHouseSink,
    tenant: &Tenant,
    closed_before: DateTime<Utc>,
    collection: Collection,
    report: &mut RunReport,
    timings: &mut Timings,
) -> Result<(), RunError> {
    let mut ended = ended_periods(tenant, closed_before);
    let Some(oldest) = ended.last() else {
        return Ok(());
    };
    let clock = Instant::now();
    let mut tx = db.tenant_tx(tenant.id).await?;
    let invoiced: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT period_start FROM invoices WHERE tenant_id = $1 AND kind = 'period' \
                                             AND period_start >= $2",
    )
    .bind(tenant.id.as_uuid())
    .bind(oldest.start)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    timings.postgres += clock.elapsed();
    ended.reverse();
    for period in ended {
        if invoiced.contains(&period.start) {
            report.already_invoiced += 1;
            continue;
        }
        match invoice_period(db, sink, tenant, period, collection, timings).await {
            Ok(Outcome::Created) => report.invoices_created += 1,
            // A concurrent run was first.
            Ok(Outcome::Exists) => report.already_invoiced += 1,
            Ok(Outcome::WaitingForRelay) => {
                report.waiting_for_relay += 1;
                break;
            }
            Ok(Outcome::WaitingForIngest) => {
                report.waiting_for_ingest += 1;
                break;
            }
            Err(InvoiceError::Rating(error)) => {
                report.failed += 1;
                tracing::error!(tenant = %tenant.id, %error, "tenant could not be rated");
                break;
            }
            Err(InvoiceError::Run(error)) => return Err(error),
        }
    }
    Ok(())
}

/// Periods of `tenant` that ended before `closed_before`, newest first, back to the
/// anchor or `MAX_PERIODS_BACK`.
fn ended_periods(tenant: &Tenant, closed_before: DateTime<Utc>) -> Vec<BillingPeriod> {
    let mut periods = Vec::new();
    let mut current = tenant.period_at(closed_before);
    while periods.len() < MAX_PERIODS_BACK && current.start > tenant.billing_anchor {
        let previous = tenant.period_at(current.start - chrono::TimeDelta::seconds(1));
        if previous.end > closed_before || previous.start == current.start {
            break;
        }
        periods.push(previous);
        current = previous;
    }
    periods
}

/// Time spent per part, summed over tenants before rounding.
#[derive(Default)]
struct Timings {
    clickhouse: Duration,
    rating: Duration,
    postgres: Duration,
}

enum Outcome {
    Created,
    Exists,
    WaitingForRelay,
    WaitingForIngest,
}

enum InvoiceError {
    Rating(RatingError),
    Run(RunError),
}

impl<E: Into<RunError>> From<E> for InvoiceError {
    fn from(error: E) -> Self {
        InvoiceError::Run(error.into())
    }
}

async fn invoice_period(
    db: &Db,
    sink: &ClickHouseSink,
    tenant: &Tenant,
    period: BillingPeriod,
    collection: Collection,
    timings: &mut Timings,
) -> Result<Outcome, InvoiceError> {
    let clock = Instant::now();
    let mut tx = db.tenant_tx(tenant.id).await.map_err(RunError::from)?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM invoices WHERE tenant_id = $1 AND kind = 'period' \
                        AND period_start = $2)",
    )
    .bind(tenant.id.as_uuid())
    .bind(period.start)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if exists {
        return Ok(Outcome::Exists);
    }
    // No batch may still be on its way into the period: close it and wait for the
    // ingest transactions already writing into it.
    let closed = metering::periods::close(db, tenant.id, period.start)
        .await
        .map_err(RunError::from)?;
    if !closed {
        return Ok(Outcome::WaitingForIngest);
    }
    let mut tx = db.tenant_tx(tenant.id).await.map_err(RunError::from)?;
    let unrelayed = metering::periods::has_unrelayed(&mut tx, tenant.id, period.start)
        .await
        .map_err(RunError::from)?;
    tx.commit().await?;
    timings.postgres += clock.elapsed();
    if unrelayed {
        return Ok(Outcome::WaitingForRelay);
    }

    let clock = Instant::now();
    let totals = sink
        .period_totals(tenant.id, period.start)
        .await
        .map_err(RunError::from)?;
    timings.clickhouse += clock.elapsed();
    let clock = Instant::now();
    let mut usage: BTreeMap<Metric, u64> = BTreeMap::new();
    for (metric, total) in totals {
        let total =
            u64::try_from(total).map_err(|_| InvoiceError::Rating(RatingError::AmountOverflow))?;
        usage.insert(metric, total);
    }
    let mut tx = db.tenant_tx(tenant.id).await.map_err(RunError::from)?;
    let composed = compose(&mut tx, tenant, period, &usage, NextPeriod::BillInAdvance)
        .await
        .map_err(|error| match error {
            ComposeError::Store(store) => InvoiceError::Run(store.into()),
            ComposeError::Rating(rating) => InvoiceError::Rating(rating),
        })?;
    timings.rating += clock.elapsed();

    let clock = Instant::now();
    let new = NewInvoice {
        kind: InvoiceKind::Period,
        period,
        plan_code: &composed.plan.code,
        rated: &composed.invoice,
        after_erasure: false,
    };
    let created = store(&mut tx, tenant, &new, collection).await?;
    tx.commit().await?;
    timings.postgres += clock.elapsed();
    Ok(if created {
        Outcome::Created
    } else {
        Outcome::Exists
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
