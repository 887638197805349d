//! Invoices as the API shows them, with their lines and where payment stands.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use serde::Serialize;
use sqlx::PgConnection;

use crate::DunningStatus;
use tenancy::StoreError;
use uuid::Uuid;

use crate::invoice_status::InvoiceStatus;

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
    #[schema(value_type = String)]
    pub dunning: DunningStatus,
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
    dunning: DunningStatus,
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
