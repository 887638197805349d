//! The tenant's usage as its data export shows it, read from the Postgres side: the
//! period counters, the quota alerts, and the ledger's events a page at a time.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use sqlx::PgConnection;
use tenancy::StoreError;

/// The tenant's counters, per period and metric.
pub async fn counters_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.period_start, c.metric), '[]') \
         FROM usage_counters c WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_one(conn)
    .await?)
}

/// The quota alerts the tenant crossed.
pub async fn quota_alerts_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(jsonb_agg(to_jsonb(a)), '[]') FROM quota_alerts a WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_one(conn)
    .await?)
}

/// One event as the ledger holds it.
#[derive(Debug, Clone)]
pub struct LedgerEvent {
    pub id: String,
    pub metric: String,
    pub value: u64,
    pub time: DateTime<Utc>,
}

/// Up to `limit` of the tenant's ledger events after `after`, in event id order
/// (bytewise, as ClickHouse orders them, so that the two can be merged).
pub async fn ledger_page(
    conn: &mut PgConnection,
    tenant: TenantId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<LedgerEvent>, StoreError> {
    let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT event_id, metric, value::text, event_time FROM usage_events \
         WHERE tenant_id = $1 AND ($2::text IS NULL OR event_id > $2 COLLATE \"C\") \
         ORDER BY event_id COLLATE \"C\" LIMIT $3",
    )
    .bind(tenant.as_uuid())
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, metric, value, time)| {
            let value = value
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("usage value {value:?}")))?;
            Ok(LedgerEvent {
                id,
                metric,
                value,
                time,
            })
        })
        .collect()
}
