//! Reading a tenant's usage counters: the exact totals of its period so far, which the
//! ingest transaction keeps.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saas_core::{Metric, TenantId};
use sqlx::PgConnection;
use tenancy::StoreError;

/// Current-period usage per metric, from the counters (exact the moment a batch is
/// acknowledged).
pub async fn period_usage(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<BTreeMap<Metric, u64>, StoreError> {
    counters(
        conn,
        "SELECT metric, used::text FROM usage_counters WHERE tenant_id = $1 AND period_start = $2",
        tenant,
        period_start,
    )
    .await
}

/// The period's usage so far with its counters locked until the caller commits: no batch
/// of the tenant commits in between, so the figures are exact at that commit (a plan
/// switch records them to rate the usage before and after it under each plan).
pub async fn lock_period_usage(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<BTreeMap<Metric, u64>, StoreError> {
    counters(
        conn,
        "SELECT metric, used::text FROM usage_counters WHERE tenant_id = $1 AND period_start = $2 \
         ORDER BY metric FOR UPDATE",
        tenant,
        period_start,
    )
    .await
}

async fn counters(
    conn: &mut PgConnection,
    sql: &'static str,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<BTreeMap<Metric, u64>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(sql)
        .bind(tenant.as_uuid())
        .bind(period_start)
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|(metric, used)| Ok((metric.parse()?, parse_u64(&used)?)))
        .collect()
}

pub(crate) fn parse_u64(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("not a u64: {text:?}")))
}
