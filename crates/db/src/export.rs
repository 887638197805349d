//! The one shape every table's part of a tenant's data export takes.

use saas_core::TenantId;
use sqlx::PgConnection;

use crate::StoreError;

/// Runs `sql`, a query of one JSON value with the tenant's id as `$1`, and returns that
/// value: an aggregate of the tenant's rows (always one), or the tenant's single row of
/// the table if it has one. Each table's owner writes the query, leaving out what must
/// not leave (secrets' hashes, answers kept for retries).
pub async fn export_json(
    conn: &mut PgConnection,
    sql: &'static str,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<serde_json::Value>>(sql)
        .bind(tenant.as_uuid())
        .fetch_optional(conn)
        .await?
        .flatten())
}
