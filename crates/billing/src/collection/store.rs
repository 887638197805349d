//! The invoice rows collection reads and moves. Status moves go through the table in
//! [`crate::invoice_status`], so an invoice only ever moves forward.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use sqlx::PgConnection;
use tenancy::StoreError;
use uuid::Uuid;

use super::{CollectError, Collector};
use crate::invoice_status::InvoiceStatus;

#[derive(sqlx::FromRow)]
pub(super) struct InvoiceState {
    pub(super) id: Uuid,
    pub(super) status: String,
    pub(super) currency: String,
    pub(super) stripe_invoice_id: Option<String>,
    pub(super) payment_attempts: i32,
    pub(super) first_failed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(super) struct LineRow {
    pub(super) position: i32,
    pub(super) metric: Option<String>,
    pub(super) quantity: String,
    pub(super) amount: i64,
    pub(super) description: String,
}

impl Collector {
    pub(super) async fn invoice_state(
        &self,
        tenant: TenantId,
        invoice: Uuid,
    ) -> Result<InvoiceState, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let state = sqlx::query_as(INVOICE_STATE)
            .bind(tenant.as_uuid())
            .bind(invoice)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(state)
    }
}

pub(super) const INVOICE_STATE: &str = "SELECT id, status, currency, stripe_invoice_id, \
     payment_attempts, first_failed_at FROM invoices WHERE tenant_id = $1 AND id = $2";
pub(super) const UNCHARGED: &str = "SELECT id, status, currency, stripe_invoice_id, \
     payment_attempts, first_failed_at FROM invoices WHERE tenant_id = $1 \
     AND status = 'open' AND stripe_invoice_id IS NOT NULL AND payment_attempts = 0 \
     ORDER BY period_start";
pub(super) const OPEN_IN_STRIPE: &str = "SELECT id, status, currency, stripe_invoice_id, \
     payment_attempts, first_failed_at FROM invoices WHERE tenant_id = $1 \
     AND status = 'open' AND stripe_invoice_id IS NOT NULL ORDER BY period_start";

/// Marks an invoice paid unless it is paid or void already (an uncollectible one may
/// still be paid, as at Stripe); true when it moved. `attempts` records the charge that
/// paid it, when it was ours.
pub async fn mark_paid(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    attempts: Option<i32>,
) -> Result<bool, StoreError> {
    let moved = sqlx::query(
        "UPDATE invoices SET status = 'paid', paid_at = now(), next_attempt_at = NULL, \
             payment_attempts = COALESCE($3, payment_attempts) \
         WHERE tenant_id = $1 AND id = $2 AND status = ANY($4)",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(attempts)
    .bind(InvoiceStatus::Paid.sources())
    .execute(conn)
    .await?
    .rows_affected();
    if moved == 1 {
        metrics::counter!("invoices_paid_total").increment(1);
    }
    Ok(moved == 1)
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
