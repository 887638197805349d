//! A tenant's invoices in its data export, and their erasure: invoices stay for the
//! legal retention period, without the personal data they were billed to.

use saas_core::TenantId;
use sqlx::PgConnection;
use tenancy::StoreError;

/// The tenant's invoices, each with its lines, oldest period first.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT coalesce(jsonb_agg(to_jsonb(i) || jsonb_build_object('lines', \
             (SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY l.position), '[]') \
              FROM invoice_lines l WHERE l.invoice_id = i.id)) ORDER BY i.period_start), '[]') \
         FROM invoices i WHERE tenant_id = $1",
        tenant,
    )
    .await
}

/// Removes the name and email the tenant's invoices were billed to. Rows changed.
pub async fn erase(conn: &mut PgConnection, tenant: TenantId) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE invoices SET billed_name = NULL, billed_email = NULL WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .execute(conn)
    .await?
    .rows_affected())
}
