//! Where collecting each invoice stands, as the collection, dunning, webhooks and
//! erasure read and move it: the only place besides invoice creation ([`super::store`])
//! that writes `invoices`. Status moves go through the table in
//! [`crate::invoice_status`], so an invoice only ever moves forward.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use sqlx::PgConnection;
use webhooks::EventData;
use webhooks::events::{DunningRetryScheduled, InvoiceSummary, PaymentFailed};

use crate::DunningStatus;
use tenancy::StoreError;
use uuid::Uuid;

use crate::invoice_status::InvoiceStatus;

#[derive(sqlx::FromRow)]
pub(crate) struct InvoiceState {
    pub(crate) id: Uuid,
    pub(crate) status: String,
    pub(crate) currency: String,
    pub(crate) stripe_invoice_id: Option<String>,
    pub(crate) payment_attempts: i32,
    pub(crate) first_failed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct LineRow {
    pub(crate) position: i32,
    pub(crate) metric: Option<String>,
    pub(crate) quantity: String,
    pub(crate) amount: i64,
    pub(crate) description: String,
}

/// The columns of [`InvoiceState`], as a literal so that queries stay static strings.
macro_rules! state_columns {
    () => {
        "SELECT id, status, currency, stripe_invoice_id, payment_attempts, first_failed_at \
         FROM invoices WHERE tenant_id = $1"
    };
}

pub(crate) async fn state(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
) -> Result<InvoiceState, StoreError> {
    Ok(sqlx::query_as(concat!(state_columns!(), " AND id = $2"))
        .bind(tenant.as_uuid())
        .bind(invoice)
        .fetch_one(conn)
        .await?)
}

/// The tenant's invoices composed at Stripe and still open, oldest first; with
/// `never_charged`, only those no charge was tried on yet.
pub(crate) async fn open_at_stripe(
    conn: &mut PgConnection,
    tenant: TenantId,
    never_charged: bool,
) -> Result<Vec<InvoiceState>, StoreError> {
    Ok(sqlx::query_as(concat!(
        state_columns!(),
        " AND status = 'open' AND stripe_invoice_id IS NOT NULL \
          AND (NOT $2 OR payment_attempts = 0) ORDER BY period_start"
    ))
    .bind(tenant.as_uuid())
    .bind(never_charged)
    .fetch_all(conn)
    .await?)
}

/// The tenant's drafts, oldest first.
pub(crate) async fn drafts(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM invoices WHERE tenant_id = $1 AND status = 'draft' ORDER BY period_start",
    )
    .bind(tenant.as_uuid())
    .fetch_all(conn)
    .await?)
}

/// The tenant's invoices not paid or closed yet (drafts included), oldest first.
pub(crate) async fn unsettled(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM invoices WHERE tenant_id = $1 AND status IN ('draft', 'open') \
         ORDER BY period_start",
    )
    .bind(tenant.as_uuid())
    .fetch_all(conn)
    .await?)
}

pub(crate) async fn lines(
    conn: &mut PgConnection,
    invoice: Uuid,
) -> Result<Vec<LineRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT position, metric, quantity::text AS quantity, amount, description \
         FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
    )
    .bind(invoice)
    .fetch_all(conn)
    .await?)
}

/// Records that a push to Stripe starts; true the first time (any later push of this
/// invoice, by whichever job, looks for what an earlier one may have made).
pub(crate) async fn start_push(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
) -> Result<bool, StoreError> {
    let first = sqlx::query(
        "UPDATE invoices SET push_started_at = now() \
         WHERE tenant_id = $1 AND id = $2 AND push_started_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(first == 1)
}

/// A draft composed and finalized at Stripe as `stripe_invoice` opens; true when it
/// moved.
pub(crate) async fn mark_pushed(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    stripe_invoice: &str,
) -> Result<bool, StoreError> {
    let moved = sqlx::query(
        "UPDATE invoices SET status = 'open', stripe_invoice_id = $3 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'draft'",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(stripe_invoice)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// Why collecting the invoice can never succeed as it stands; true the first time.
pub(crate) async fn flag_collection_error(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    why: &str,
) -> Result<bool, StoreError> {
    let flagged = sqlx::query(
        "UPDATE invoices SET collection_error = $3 \
         WHERE tenant_id = $1 AND id = $2 AND collection_error IS NULL",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(why)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(flagged == 1)
}

/// A failed charge number `number`, and what dunning does next (`dunning` and when);
/// true when it was recorded (not by a twin of this charge first).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_failure(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    number: i32,
    first_failed_at: DateTime<Utc>,
    error: &str,
    dunning: DunningStatus,
    next_attempt_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let recorded: Option<(String, i64)> = sqlx::query_as(
        "UPDATE invoices SET payment_attempts = $3, first_failed_at = $4, \
             last_payment_error = $5, dunning = $6, next_attempt_at = $7 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'open' AND payment_attempts = $3 - 1 \
         RETURNING currency, total",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(number)
    .bind(first_failed_at)
    .bind(error)
    .bind(dunning)
    .bind(next_attempt_at)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((currency, total)) = recorded else {
        return Ok(false);
    };
    let failed = PaymentFailed {
        invoice_id: invoice.to_string(),
        amount_due: total,
        currency,
        reason: Some(error.to_owned()),
        next_retry_at: next_attempt_at,
    };
    webhooks::emit(conn, tenant, EventData::InvoicePaymentFailed(failed)).await?;
    if let Some(retry_at) = next_attempt_at {
        let scheduled = DunningRetryScheduled {
            invoice_id: invoice.to_string(),
            retry: u32::try_from(number).unwrap_or(0),
            retry_at,
        };
        webhooks::emit(conn, tenant, EventData::DunningRetryScheduled(scheduled)).await?;
    }
    Ok(true)
}

/// Dunning's verdict on the tenant's invoices: whether it gave up on `invoice` without
/// having suspended the tenant for it yet (and why), and whether it gave up on any
/// invoice still unpaid.
pub(crate) async fn dunning_verdict(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
) -> Result<(Option<DunningStatus>, bool), StoreError> {
    let gave_up_on_this: Option<DunningStatus> = sqlx::query_scalar(
        "SELECT dunning FROM invoices WHERE tenant_id = $1 AND id = $2 \
           AND status = 'open' AND dunning IN ('exhausted', 'hard_decline') \
           AND dunning_suspended_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .fetch_optional(&mut *conn)
    .await?;
    let any_unpaid: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM invoices WHERE tenant_id = $1 AND status = 'open' \
           AND dunning IN ('exhausted', 'hard_decline'))",
    )
    .bind(tenant.as_uuid())
    .fetch_one(conn)
    .await?;
    Ok((gave_up_on_this, any_unpaid))
}

/// Records that dunning suspended the tenant over `invoice` (once only).
pub(crate) async fn mark_dunning_suspended(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE invoices SET dunning_suspended_at = now() \
         WHERE tenant_id = $1 AND id = $2 AND dunning_suspended_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .execute(conn)
    .await?;
    Ok(())
}

/// Invoices whose collection stalled (made before `before`): drafts, invoices pushed
/// but never charged, and dunning retries overdue, none flagged as hopeless, in the
/// order they were made, after `after` (created, id). (tenant, invoice, status, payment
/// attempts, created).
pub(crate) async fn stalled(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid, String, i32, DateTime<Utc>)>, StoreError> {
    let (after_created, after_id) = after.unzip();
    Ok(sqlx::query_as(
        "SELECT i.tenant_id, i.id, i.status, i.payment_attempts, i.created_at FROM invoices i \
         WHERE i.created_at < $1 AND i.collection_error IS NULL AND ( \
               i.status = 'draft' \
            OR (i.status = 'open' AND i.stripe_invoice_id IS NOT NULL AND i.payment_attempts = 0) \
            OR (i.status = 'open' AND i.dunning = 'retrying' AND i.next_attempt_at < $1)) \
           AND ($2::timestamptz IS NULL OR (i.created_at, i.id) > ($2, $3)) \
         ORDER BY i.created_at, i.id LIMIT $4",
    )
    .bind(before)
    .bind(after_created)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Our invoice composed at Stripe as `stripe_invoice`, and its tenant.
pub(crate) async fn by_stripe_id(
    conn: &mut PgConnection,
    stripe_invoice: &str,
) -> Result<Option<(Uuid, TenantId)>, StoreError> {
    let found: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, tenant_id FROM invoices WHERE stripe_invoice_id = $1")
            .bind(stripe_invoice)
            .fetch_optional(conn)
            .await?;
    Ok(found.map(|(invoice, tenant)| (invoice, TenantId::from_uuid(tenant))))
}

/// Marks an invoice paid unless it is paid or void already (an uncollectible one may
/// still be paid, as at Stripe); true when it moved. `attempts` records the charge that
/// paid it, when it was ours.
pub async fn mark_paid(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    attempts: Option<i32>,
) -> Result<bool, StoreError> {
    type Paid = (DateTime<Utc>, DateTime<Utc>, String, i64);
    let moved: Option<Paid> = sqlx::query_as(
        "UPDATE invoices SET status = 'paid', paid_at = now(), next_attempt_at = NULL, \
             payment_attempts = COALESCE($3, payment_attempts) \
         WHERE tenant_id = $1 AND id = $2 AND status = ANY($4) \
         RETURNING period_start, period_end, currency, total",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(attempts)
    .bind(InvoiceStatus::Paid.sources())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((period_start, period_end, currency, total)) = moved else {
        return Ok(false);
    };
    metrics::counter!("invoices_paid_total").increment(1);
    let summary = InvoiceSummary {
        invoice_id: invoice.to_string(),
        period_start,
        period_end,
        currency,
        total,
        status: "paid".to_owned(),
    };
    webhooks::emit(conn, tenant, EventData::InvoicePaid(summary)).await?;
    Ok(true)
}

/// Closes an invoice without payment as Stripe did (`void` is final; an
/// `uncollectible` one may still be paid later); true when it moved.
pub async fn close(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    status: &str,
) -> Result<bool, StoreError> {
    let from = match InvoiceStatus::parse(status) {
        Some(to @ (InvoiceStatus::Void | InvoiceStatus::Uncollectible)) => to.sources(),
        _ => return Ok(false),
    };
    let moved = sqlx::query(
        "UPDATE invoices SET status = $3, next_attempt_at = NULL \
         WHERE tenant_id = $1 AND id = $2 AND status = ANY($4)",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(status)
    .bind(&from)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(moved == 1)
}
