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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use metering::{ClickHouseSink, SinkError};
use saas_core::{BillingPeriod, Metric, TenantId};
use serde::Serialize;
use tenancy::tenants::Tenant;
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
    /// Tenants due for an invoice that the run looked at (the others are not read).
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

/// Invoices every period that ended at least `grace` before `now`, reading only the
/// tenants due for it (`tenancy::tenants::due_for_invoice`), a page at a time.
#[tracing::instrument(name = "invoice_run", skip_all, fields(run = tracing::field::Empty))]
pub async fn run(
    db: &Db,
    sink: &ClickHouseSink,
    now: DateTime<Utc>,
    grace: Duration,
    collection: Collection,
) -> Result<RunReport, RunError> {
    let mut progress = Progress::start();
    tracing::Span::current().record("run", tracing::field::display(progress.report.run_id));
    let closed_before = now - chrono::TimeDelta::from_std(grace).unwrap_or_default();
    let mut after = None;
    loop {
        let page = {
            let mut tx = db.system_tx("invoice run tenants").await?;
            let page =
                tenancy::tenants::due_for_invoice(&mut tx, closed_before, after, PAGE).await?;
            tx.commit().await?;
            page
        };
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        let tenants: Vec<Tenant> = page.into_iter().map(|(_, tenant)| tenant).collect();
        invoice_tenants(db, sink, &tenants, closed_before, collection, &mut progress).await?;
    }
    Ok(progress.finish())
}

/// A run under way: what it did so far, and where its time went.
pub(super) struct Progress {
    started: Instant,
    report: RunReport,
    timings: Timings,
}

/// Time spent per part, summed over tenants before rounding.
#[derive(Default)]
struct Timings {
    clickhouse: Duration,
    rating: Duration,
    postgres: Duration,
}

impl Progress {
    pub(super) fn start() -> Self {
        Self {
            started: Instant::now(),
            report: RunReport {
                run_id: Uuid::now_v7(),
                ..RunReport::default()
            },
            timings: Timings::default(),
        }
    }

    /// The report, with the time per part summed over tenants before rounding.
    pub(super) fn finish(mut self) -> RunReport {
        let report = &mut self.report;
        report.clickhouse_ms = millis(self.timings.clickhouse);
        report.rating_ms = millis(self.timings.rating);
        report.postgres_ms = millis(self.timings.postgres);
        report.total_ms = millis(self.started.elapsed());
        metrics::counter!("invoices_created_total").increment(report.invoices_created as u64);
        tracing::info!(run = %report.run_id, checked = report.tenants_checked,
            created = report.invoices_created, waiting_for_relay = report.waiting_for_relay,
            waiting_for_ingest = report.waiting_for_ingest, total_ms = report.total_ms,
            "invoice run done");
        self.report
    }
}

/// Tenants per page: one Postgres read of their invoices and one ClickHouse read of
/// their usage each.
pub(super) const PAGE: u32 = 500;

/// Invoices the ended periods of `tenants` (see [`invoice_page`]), then moves each
/// tenant's due time on to the end of its oldest period still without an invoice. The
/// tenants are billed ones: the due reads (`tenancy::tenants::due_for_invoice`,
/// `due_among`) return no others.
pub(super) async fn invoice_tenants(
    db: &Db,
    sink: &ClickHouseSink,
    tenants: &[Tenant],
    closed_before: DateTime<Utc>,
    collection: Collection,
    progress: &mut Progress,
) -> Result<(), RunError> {
    progress.report.tenants_checked += tenants.len();
    let waiting = invoice_page(db, sink, tenants, closed_before, collection, progress).await?;
    let due: Vec<(TenantId, DateTime<Utc>)> = tenants
        .iter()
        .map(|tenant| {
            let next = waiting
                .get(&tenant.id)
                .copied()
                .unwrap_or_else(|| tenant.period_at(closed_before));
            (tenant.id, next.end)
        })
        .collect();
    let mut tx = db.system_tx("invoice run due times").await?;
    tenancy::tenants::set_invoice_due(&mut tx, &due).await?;
    tx.commit().await?;
    Ok(())
}

/// Invoices the ended periods without an invoice of a page of tenants, each tenant's
/// oldest first. Each period's invoice bills the next one in advance, and a run may die
/// at any point: in this order what a dead run leaves is always finished from where it
/// stopped, and a later period is never invoiced while an earlier one waits (for
/// ingest, the relay, or a rating fix).
///
/// In three steps, so that ClickHouse is asked once for the whole page rather than once
/// per tenant: find each tenant's periods that are ready (closed to ingest and wholly
/// relayed), read all their totals in one query, then rate and store them.
///
/// Returns, for each tenant left with an ended period not invoiced, the oldest such.
async fn invoice_page(
    db: &Db,
    sink: &ClickHouseSink,
    tenants: &[Tenant],
    closed_before: DateTime<Utc>,
    collection: Collection,
    progress: &mut Progress,
) -> Result<HashMap<TenantId, BillingPeriod>, RunError> {
    let Progress {
        report, timings, ..
    } = progress;
    let mut waiting = HashMap::new();
    let ended: Vec<(&Tenant, Vec<BillingPeriod>)> = tenants
        .iter()
        .map(|tenant| (tenant, ended_periods(tenant, closed_before)))
        .filter(|(_, periods)| !periods.is_empty())
        .collect();
    if ended.is_empty() {
        return Ok(waiting);
    }
    let clock = Instant::now();
    let invoiced = invoiced_periods(db, &ended).await?;
    let mut ready: Vec<(&Tenant, Vec<BillingPeriod>)> = Vec::new();
    for (tenant, periods) in &ended {
        let mut ready_periods = Vec::new();
        for period in periods {
            if invoiced.contains(&(tenant.id, period.start)) {
                report.already_invoiced += 1;
                continue;
            }
            match readiness(db, tenant.id, period.start).await? {
                Readiness::Ready => ready_periods.push(*period),
                Readiness::WaitingForIngest => {
                    report.waiting_for_ingest += 1;
                    waiting.insert(tenant.id, *period);
                    break;
                }
                Readiness::WaitingForRelay => {
                    report.waiting_for_relay += 1;
                    waiting.insert(tenant.id, *period);
                    break;
                }
            }
        }
        if !ready_periods.is_empty() {
            ready.push((tenant, ready_periods));
        }
    }
    timings.postgres += clock.elapsed();

    let clock = Instant::now();
    let pairs: Vec<(TenantId, DateTime<Utc>)> = ready
        .iter()
        .flat_map(|(tenant, periods)| periods.iter().map(|p| (tenant.id, p.start)))
        .collect();
    let totals = sink.period_totals_of(&pairs).await?;
    timings.clickhouse += clock.elapsed();

    for (tenant, periods) in ready {
        for period in periods {
            let usage = totals.get(&(tenant.id, period.start));
            match invoice_period(db, tenant, period, usage, collection, timings).await {
                Ok(true) => report.invoices_created += 1,
                // A concurrent run was first.
                Ok(false) => report.already_invoiced += 1,
                Err(InvoiceError::Rating(error)) => {
                    report.failed += 1;
                    tracing::error!(tenant = %tenant.id, %error, "tenant could not be rated");
                    waiting.insert(tenant.id, period);
                    break;
                }
                Err(InvoiceError::Run(error)) => return Err(error),
            }
        }
    }
    Ok(waiting)
}

/// Which of the candidate (tenant, period start) pairs have a period invoice already,
/// in one read for the page.
async fn invoiced_periods(
    db: &Db,
    ended: &[(&Tenant, Vec<BillingPeriod>)],
) -> Result<HashSet<(TenantId, DateTime<Utc>)>, RunError> {
    let (tenants, starts): (Vec<Uuid>, Vec<DateTime<Utc>>) = ended
        .iter()
        .flat_map(|(tenant, periods)| periods.iter().map(|p| (tenant.id.as_uuid(), p.start)))
        .unzip();
    let mut tx = db.system_tx("invoice run invoiced periods").await?;
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT i.tenant_id, i.period_start FROM invoices i \
         JOIN unnest($1::uuid[], $2::timestamptz[]) AS wanted (tenant_id, period_start) \
           ON i.tenant_id = wanted.tenant_id AND i.period_start = wanted.period_start \
         WHERE i.kind = 'period'",
    )
    .bind(&tenants)
    .bind(&starts)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, start)| (TenantId::from_uuid(tenant), start))
        .collect())
}

/// Periods of `tenant` that ended before `closed_before`, oldest first, back to the
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
    periods.reverse();
    periods
}

enum Readiness {
    Ready,
    WaitingForIngest,
    WaitingForRelay,
}

/// Whether the period's usage is final: no batch may still be on its way into it (close
/// it, and wait for the ingest transactions already writing into it), and the relay has
/// copied all of it to ClickHouse.
async fn readiness(
    db: &Db,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<Readiness, RunError> {
    if !metering::periods::close(db, tenant, period_start).await? {
        return Ok(Readiness::WaitingForIngest);
    }
    let mut tx = db.tenant_tx(tenant).await?;
    let unrelayed = metering::periods::has_unrelayed(&mut tx, tenant, period_start).await?;
    tx.commit().await?;
    Ok(if unrelayed {
        Readiness::WaitingForRelay
    } else {
        Readiness::Ready
    })
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

/// Rates the period's usage (`None`: it had none) and stores its invoice; whether this
/// call created it (false: a concurrent run was first).
async fn invoice_period(
    db: &Db,
    tenant: &Tenant,
    period: BillingPeriod,
    totals: Option<&BTreeMap<Metric, u128>>,
    collection: Collection,
    timings: &mut Timings,
) -> Result<bool, InvoiceError> {
    let clock = Instant::now();
    let mut usage: BTreeMap<Metric, u64> = BTreeMap::new();
    for (metric, total) in totals.into_iter().flatten() {
        let total =
            u64::try_from(*total).map_err(|_| InvoiceError::Rating(RatingError::AmountOverflow))?;
        usage.insert(*metric, total);
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
    Ok(created)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
