//! The one writer of `invoices` and `invoice_lines` rows as they are made: period
//! invoices from the runs (and at erasure), and signup invoices from onboarding.

use saas_core::{BillingPeriod, TenantId, TenantState};
use serde::Serialize;
use sqlx::PgConnection;
use tenancy::StoreError;
use tenancy::tenants::Tenant;
use uuid::Uuid;
use webhooks::EventData;
use webhooks::events::InvoiceSummary;

use super::run::{Collection, RunError};
use crate::rating::{LineKind, RatedInvoice};

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
    let Tenant {
        state, name, email, ..
    } = tenancy::tenants::get_for_share(&mut *conn, tenant.id).await?;
    if state == TenantState::Deleted && !new.after_erasure {
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
    let summary = InvoiceSummary {
        invoice_id: id.to_string(),
        period_start: new.period.start,
        period_end: new.period.end,
        currency: new.rated.currency.to_string(),
        total: new.rated.total,
        status: status.to_owned(),
    };
    webhooks::emit(conn, tenant.id, EventData::InvoiceCreated(summary)).await?;
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
