//! What the operator overview shows of invoices: revenue by month and what is unpaid,
//! readiness probes left out.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::DunningStatus;
use tenancy::StoreError;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Revenue {
    /// `YYYY-MM` of the invoiced periods' start.
    pub month: String,
    pub currency: String,
    /// Paid invoices, minor units.
    pub paid: i64,
    pub invoices: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct UnpaidInvoice {
    #[schema(value_type = String)]
    pub id: uuid::Uuid,
    #[schema(value_type = String)]
    pub tenant_id: uuid::Uuid,
    pub period_start: DateTime<Utc>,
    pub status: String,
    pub total: i64,
    pub currency: String,
    /// Charges tried so far.
    pub payment_attempts: i32,
    /// `none`, `retrying`, `exhausted` or `hard_decline`.
    #[schema(value_type = String)]
    pub dunning: DunningStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why collecting it can never succeed as it stands (an operator must act), if so.
    pub collection_error: Option<String>,
}

/// Revenue from paid invoices per month of the period they bill, newest first.
pub async fn revenue_by_month(
    conn: &mut PgConnection,
    months: i64,
) -> Result<Vec<Revenue>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT to_char(date_trunc('month', i.period_start), 'YYYY-MM') AS month, i.currency, \
                sum(i.total)::bigint AS paid, count(*) AS invoices \
         FROM invoices i \
         WHERE i.status = 'paid' AND NOT tenant_is_synthetic(i.tenant_id) \
         GROUP BY 1, 2 ORDER BY 1 DESC, 2 LIMIT $1",
    )
    .bind(months)
    .fetch_all(conn)
    .await?)
}

/// Invoices not paid (drafts, open or uncollectible), oldest period first.
pub async fn unpaid(conn: &mut PgConnection, limit: i64) -> Result<Vec<UnpaidInvoice>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT i.id, i.tenant_id, i.period_start, i.status, i.total, i.currency, \
                i.payment_attempts, i.dunning, i.next_attempt_at, i.collection_error \
         FROM invoices i \
         WHERE i.status IN ('draft', 'open', 'uncollectible') \
           AND NOT tenant_is_synthetic(i.tenant_id) \
         ORDER BY i.period_start LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
