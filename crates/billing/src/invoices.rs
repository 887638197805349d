//! Invoice runs: every tenant whose billing period has ended gets exactly one invoice
//! closing it, composed (see [`crate::period_invoice`]) from the period's usage in
//! ClickHouse.
//!
//! A period is invoiced only once the relay has copied all of its events to ClickHouse
//! (checked against the ledger, per tenant) and a grace time after its end has passed,
//! so that no late commit is missed. The invoice and its lines are written in one
//! transaction under the unique key (tenant, period start): a run killed half-way is
//! simply run again, and two runs at once cannot make two invoices. Synthetic tenants
//! (readiness probes) are never billed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use metering::{ClickHouseSink, SinkError};
use saas_core::{BillingPeriod, Metric, TenantId, TenantState};
use serde::Serialize;
use sqlx::PgConnection;
use tenancy::tenants::{Tenant, TenantQuery};
use tenancy::{Db, StoreError};
use uuid::Uuid;

use crate::invoice_status::InvoiceStatus;
use crate::period_invoice::{ComposeError, NextPeriod, compose};
use crate::rating::{LineKind, RatedInvoice, RatingError};

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
            for period in ended_periods(&tenant, closed_before) {
                let outcome =
                    invoice_period(db, sink, &tenant, period, collection, &mut timings).await;
                match outcome {
                    Ok(Outcome::Created) => report.invoices_created += 1,
                    Ok(Outcome::Exists) => {
                        report.already_invoiced += 1;
                        break; // older periods were handled before this one
                    }
                    Ok(Outcome::WaitingForRelay) => report.waiting_for_relay += 1,
                    Err(InvoiceError::Rating(error)) => {
                        report.failed += 1;
                        tracing::error!(tenant = %tenant.id, %error, "tenant could not be rated");
                    }
                    Err(InvoiceError::Run(error)) => return Err(error),
                }
            }
        }
    }
    report.clickhouse_ms = millis(timings.clickhouse);
    report.rating_ms = millis(timings.rating);
    report.postgres_ms = millis(timings.postgres);
    report.total_ms = millis(started.elapsed());
    metrics::counter!("invoices_created_total").increment(report.invoices_created as u64);
    tracing::info!(run = %report.run_id, created = report.invoices_created,
        waiting = report.waiting_for_relay, total_ms = report.total_ms, "invoice run done");
    Ok(report)
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
    if exists {
        return Ok(Outcome::Exists);
    }
    let position = metering::relay::relay_position(&mut tx)
        .await
        .map_err(RunError::from)?;
    let unrelayed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM usage_events WHERE tenant_id = $1 AND period_start = $2 \
                        AND (ledger_xid, ledger_seq) > ($3, $4))",
    )
    .bind(tenant.id.as_uuid())
    .bind(period.start)
    .bind(position.xid)
    .bind(position.seq)
    .fetch_one(&mut *tx)
    .await?;
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

/// Which invoice of a tenant's an invoice is (see [`crate::period_invoice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceKind {
    /// The first period's base fee, paid at signup.
    Signup,
    /// Closes a period: its usage and prorations, and the next period's base fee.
    Period,
}

impl InvoiceKind {
    fn as_str(self) -> &'static str {
        match self {
            InvoiceKind::Signup => "signup",
            InvoiceKind::Period => "period",
        }
    }
}

/// An invoice to write.
pub struct NewInvoice<'a> {
    pub kind: InvoiceKind,
    pub period: BillingPeriod,
    pub plan_code: &'a str,
    pub rated: &'a RatedInvoice,
    /// The final invoice of an erased tenant: written although the tenant is `deleted`.
    pub after_erasure: bool,
}

/// Records the signup invoice, paid at `stripe_invoice` before the tenant was
/// provisioned (in the provisioning transaction). Its id is the tenant's, which is also
/// the reference the Stripe invoice carries.
pub async fn record_signup_invoice(
    conn: &mut PgConnection,
    tenant: &Tenant,
    rated: &RatedInvoice,
    stripe_invoice: &str,
) -> Result<(), StoreError> {
    let new = NewInvoice {
        kind: InvoiceKind::Signup,
        period: tenant.period_at(tenant.billing_anchor),
        plan_code: &tenant.plan_code,
        rated,
        after_erasure: false,
    };
    let id = signup_invoice_id(tenant.id);
    if insert(conn, tenant, id, &new, "paid").await? {
        sqlx::query(
            "UPDATE invoices SET stripe_invoice_id = $3, payment_attempts = 1 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.id.as_uuid())
        .bind(id)
        .bind(stripe_invoice)
        .execute(&mut *conn)
        .await?;
        metrics::counter!("invoices_paid_total").increment(1);
    }
    Ok(())
}

/// The id of a tenant's signup invoice: the tenant's own (a signup's id becomes its
/// tenant's), known before the tenant exists.
pub fn signup_invoice_id(tenant: TenantId) -> Uuid {
    tenant.as_uuid()
}

/// Writes a period invoice and queues its collection; false when the period was
/// invoiced meanwhile.
pub(crate) async fn store(
    conn: &mut PgConnection,
    tenant: &Tenant,
    new: &NewInvoice<'_>,
    collection: Collection,
) -> Result<bool, RunError> {
    let id = Uuid::now_v7();
    let through_stripe = collection == Collection::Stripe && tenant.stripe_customer_id.is_some();
    let status = match (new.rated.total, through_stripe) {
        // Nothing to collect: settled as it is made.
        (0, _) => "paid",
        (_, true) => "draft",
        (_, false) => "open",
    };
    let created = insert(conn, tenant, id, new, status).await?;
    if created && status == "draft" {
        crate::collection::enqueue_collection(conn, tenant.id, id).await?;
    }
    Ok(created)
}

/// Writes an invoice and its lines; false when the tenant has one of this kind for the
/// period already, or was erased meanwhile.
async fn insert(
    conn: &mut PgConnection,
    tenant: &Tenant,
    id: Uuid,
    new: &NewInvoice<'_>,
    status: &str,
) -> Result<bool, StoreError> {
    // Read again under a share lock: an erasure taken meanwhile waits for this commit
    // (and then strips this invoice too), or has happened and there is nothing to bill.
    let (state, name, email): (String, String, Option<String>) =
        sqlx::query_as("SELECT state, name, email FROM tenants WHERE id = $1 FOR SHARE")
            .bind(tenant.id.as_uuid())
            .fetch_one(&mut *conn)
            .await?;
    if state == TenantState::Deleted.as_str() && !new.after_erasure {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO invoices (id, tenant_id, kind, period_start, period_end, plan_code, currency, \
                               total, status, billed_name, billed_email, paid_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $9 = 'paid' THEN now() END) \
         ON CONFLICT (tenant_id, kind, period_start) DO NOTHING",
    )
    .bind(id)
    .bind(tenant.id.as_uuid())
    .bind(new.kind.as_str())
    .bind(new.period.start)
    .bind(new.period.end)
    .bind(new.plan_code)
    .bind(new.rated.currency.to_string())
    .bind(new.rated.total)
    .bind(status)
    .bind(&name)
    .bind(&email)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    for (position, line) in new.rated.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_lines (invoice_id, tenant_id, position, kind, metric, tier, \
                                        quantity, unit_amount, unit_size, amount, description) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(tenant.id.as_uuid())
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(kind_text(line.kind))
        .bind(line.metric.map(|m| m.as_str()))
        .bind(line.tier.and_then(|t| i32::try_from(t).ok()))
        .bind(line.quantity.to_string())
        .bind(line.unit_amount)
        .bind(i64::try_from(line.unit_size).unwrap_or(i64::MAX))
        .bind(line.amount)
        .bind(&line.description)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

fn kind_text(kind: LineKind) -> &'static str {
    match kind {
        LineKind::BaseFee => "base_fee",
        LineKind::Included => "included",
        LineKind::Overage => "overage",
        LineKind::Proration => "proration",
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An invoice as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Invoice {
    #[schema(value_type = String)]
    pub id: Uuid,
    /// `signup` (the first period's base fee, paid at signup) or `period` (closes the
    /// period: its usage and prorations, and the next period's base fee in advance).
    pub kind: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub plan: String,
    pub currency: String,
    pub total: i64,
    pub status: InvoiceStatus,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub payment: PaymentState,
    pub lines: Vec<StoredLine>,
}

/// Where collecting the invoice stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentState {
    /// Charges tried so far.
    pub attempts: i32,
    /// `none`, `retrying`, `exhausted` (retries used up) or `hard_decline` (not retried).
    pub dunning: String,
    /// When the next retry is due, while dunning retries.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last charge failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct StoredLine {
    pub kind: String,
    pub metric: Option<String>,
    pub tier: Option<i32>,
    /// Units (a decimal string would be exact past 2^53; quantities are u64).
    #[sqlx(try_from = "String")]
    #[schema(value_type = u64)]
    pub quantity: QuantityText,
    pub unit_amount: i64,
    pub unit_size: i64,
    pub amount: i64,
    pub description: String,
}

/// A line quantity read from `numeric`, served as a JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantityText(pub u64);

impl TryFrom<String> for QuantityText {
    type Error = std::num::ParseIntError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse().map(QuantityText)
    }
}

impl Serialize for QuantityText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: Uuid,
    kind: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    plan_code: String,
    currency: String,
    total: i64,
    status: String,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    payment_attempts: i32,
    dunning: String,
    next_attempt_at: Option<DateTime<Utc>>,
    last_payment_error: Option<String>,
}

/// The tenant's invoices, newest first, with their lines.
pub async fn list(conn: &mut PgConnection, tenant: TenantId) -> Result<Vec<Invoice>, StoreError> {
    let rows: Vec<InvoiceRow> = sqlx::query_as(
        "SELECT id, kind, period_start, period_end, plan_code, currency, total, status, created_at, \
                paid_at, payment_attempts, dunning, next_attempt_at, last_payment_error \
         FROM invoices WHERE tenant_id = $1 ORDER BY period_start DESC, created_at DESC LIMIT 500",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    let mut invoices = Vec::with_capacity(rows.len());
    for row in rows {
        invoices.push(with_lines(conn, row).await?);
    }
    Ok(invoices)
}

/// One invoice of the tenant; another tenant's is not found.
pub async fn get(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: Uuid,
) -> Result<Invoice, StoreError> {
    let row: InvoiceRow = sqlx::query_as(
        "SELECT id, kind, period_start, period_end, plan_code, currency, total, status, created_at, \
                paid_at, payment_attempts, dunning, next_attempt_at, last_payment_error \
         FROM invoices WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    with_lines(conn, row).await
}

async fn with_lines(conn: &mut PgConnection, row: InvoiceRow) -> Result<Invoice, StoreError> {
    let lines: Vec<StoredLine> = sqlx::query_as(
        "SELECT kind, metric, tier, quantity::text AS quantity, unit_amount, unit_size, amount, description \
         FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
    )
    .bind(row.id)
    .fetch_all(conn)
    .await?;
    Ok(Invoice {
        id: row.id,
        kind: row.kind,
        period_start: row.period_start,
        period_end: row.period_end,
        plan: row.plan_code,
        currency: row.currency,
        total: row.total,
        status: InvoiceStatus::parse(&row.status)
            .ok_or_else(|| StoreError::Corrupt(format!("invoice status {}", row.status)))?,
        created_at: row.created_at,
        paid_at: row.paid_at,
        payment: PaymentState {
            attempts: row.payment_attempts,
            dunning: row.dunning,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_payment_error,
        },
        lines,
    })
}

/// One difference between what an invoice bills and the usage in ClickHouse.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    #[schema(value_type = String)]
    pub invoice_id: Uuid,
    #[schema(value_type = String)]
    pub tenant_id: Uuid,
    pub metric: String,
    pub billed: u64,
    pub usage: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    pub invoices_checked: usize,
    pub mismatches: Vec<Mismatch>,
}

/// Compares, per period invoice (of `tenant`, or all), the billed quantity of every
/// metric with the period's usage in ClickHouse.
pub async fn reconcile(
    db: &Db,
    sink: &ClickHouseSink,
    tenant: Option<TenantId>,
) -> Result<Reconciliation, RunError> {
    let invoices: Vec<(Uuid, Uuid, DateTime<Utc>)> = {
        let mut tx = db.system_tx("reconciliation").await?;
        // Erased tenants' usage is gone by design: nothing to compare their invoices with.
        let rows = sqlx::query_as(
            "SELECT i.id, i.tenant_id, i.period_start FROM invoices i \
             JOIN tenants t ON t.id = i.tenant_id \
             WHERE i.kind = 'period' AND t.state <> 'deleted' \
               AND ($1::uuid IS NULL OR i.tenant_id = $1) \
             ORDER BY i.tenant_id, i.period_start",
        )
        .bind(tenant.map(|t| t.as_uuid()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows
    };
    let mut mismatches = Vec::new();
    for (invoice_id, tenant_id, period_start) in &invoices {
        let billed: Vec<(String, String)> = {
            let mut tx = db.system_tx("reconciliation lines").await?;
            let rows = sqlx::query_as(
                "SELECT metric, sum(quantity)::text FROM invoice_lines \
                 WHERE invoice_id = $1 AND metric IS NOT NULL GROUP BY metric",
            )
            .bind(invoice_id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        };
        let billed: BTreeMap<String, u128> = billed
            .into_iter()
            .map(|(metric, quantity)| (metric, quantity.parse().unwrap_or(u128::MAX)))
            .collect();
        let usage: BTreeMap<String, u128> = sink
            .period_totals(TenantId::from_uuid(*tenant_id), *period_start)
            .await?
            .into_iter()
            .map(|(metric, total)| (metric.as_str().to_owned(), total))
            .collect();
        for metric in Metric::ALL {
            let name = metric.as_str();
            let (b, u) = (
                billed.get(name).copied().unwrap_or(0),
                usage.get(name).copied().unwrap_or(0),
            );
            if b != u {
                mismatches.push(Mismatch {
                    invoice_id: *invoice_id,
                    tenant_id: *tenant_id,
                    metric: name.to_owned(),
                    billed: u64::try_from(b).unwrap_or(u64::MAX),
                    usage: u64::try_from(u).unwrap_or(u64::MAX),
                });
            }
        }
    }
    Ok(Reconciliation {
        invoices_checked: invoices.len(),
        mismatches,
    })
}
