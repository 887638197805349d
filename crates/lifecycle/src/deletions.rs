//! The record kept of each erasure (`tenant_deletions`): who asked, when it was done, and
//! what it removed, in counts only.

use saas_core::{TenantId, TransitionId};
use sqlx::PgConnection;
use tenancy::StoreError;

/// What one run of an erasure removed.
#[derive(Debug, Clone, Copy)]
pub struct Erased {
    pub postgres_rows: u64,
    pub clickhouse_events: u64,
    pub stripe_customer_deleted: bool,
}

/// Records the erasure that `transition` asked for; a run again (a retried job) adds its
/// counts to the first one's.
pub async fn record(
    conn: &mut PgConnection,
    tenant: TenantId,
    transition: TransitionId,
    erased: Erased,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tenant_deletions (tenant_id, transition_id, requested_by, requested_at, \
             completed_at, postgres_rows_deleted, clickhouse_events_deleted, \
             stripe_customer_deleted) \
         SELECT $1, $2, actor, created_at, now(), $3, $4, $5 FROM tenant_transitions WHERE id = $2 \
         ON CONFLICT (tenant_id) DO UPDATE SET completed_at = now(), \
             postgres_rows_deleted = tenant_deletions.postgres_rows_deleted + excluded.postgres_rows_deleted, \
             clickhouse_events_deleted = tenant_deletions.clickhouse_events_deleted + excluded.clickhouse_events_deleted, \
             stripe_customer_deleted = tenant_deletions.stripe_customer_deleted OR excluded.stripe_customer_deleted",
    )
    .bind(tenant.as_uuid())
    .bind(transition.as_uuid())
    .bind(i64::try_from(erased.postgres_rows).unwrap_or(i64::MAX))
    .bind(i64::try_from(erased.clickhouse_events).unwrap_or(i64::MAX))
    .bind(erased.stripe_customer_deleted)
    .execute(conn)
    .await?;
    Ok(())
}

/// The tenant's erasure record, if it was erased, for its data export.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT to_jsonb(d) FROM tenant_deletions d WHERE tenant_id = $1",
        tenant,
    )
    .await
}
