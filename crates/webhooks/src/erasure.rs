//! Erasing a tenant's webhook data. The tenant's endpoints hear of the erasure first:
//! [`erase_after_notice`] sends `tenant.erasure_completed` and erases everything else at
//! once; each endpoint that subscribes to it is erased when that last delivery ends
//! (delivered, or out of attempts), by [`crate::delivery`].

use chrono::{DateTime, Utc};
use db::StoreError;
use saas_core::TenantId;
use sqlx::PgConnection;

use crate::events::{ErasureCompleted, EventData};

/// The type of the last event, after which an endpoint is erased.
pub(crate) const LAST_EVENT: &str = "tenant.erasure_completed";

/// In the erasure's transaction: queues `tenant.erasure_completed` and erases every
/// other event, delivery and endpoint of the tenant. Rows erased.
pub async fn erase_after_notice(
    conn: &mut PgConnection,
    tenant: TenantId,
    erased_at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let last = crate::emit(
        conn,
        tenant,
        EventData::TenantErasureCompleted(ErasureCompleted { erased_at }),
    )
    .await?;
    let mut erased = sqlx::query("DELETE FROM webhook_events WHERE tenant_id = $1 AND id <> $2")
        .bind(tenant.as_uuid())
        .bind(last.as_uuid())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    erased += sqlx::query(
        "DELETE FROM webhook_endpoints e WHERE tenant_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                         WHERE d.endpoint_id = e.id AND d.event_id = $2)",
    )
    .bind(tenant.as_uuid())
    .bind(last.as_uuid())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    erased += erase_unreferenced_events(conn, tenant).await?;
    Ok(erased)
}

/// After the last delivery to `endpoint` ended: erases the endpoint, and the event once
/// no endpoint waits for it.
pub(crate) async fn erase_endpoint_after_last_event(
    conn: &mut PgConnection,
    tenant: TenantId,
    endpoint: uuid::Uuid,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.as_uuid())
        .bind(endpoint)
        .execute(&mut *conn)
        .await?;
    erase_unreferenced_events(conn, tenant).await?;
    Ok(())
}

async fn erase_unreferenced_events(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM webhook_events v WHERE tenant_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = v.id)",
    )
    .bind(tenant.as_uuid())
    .execute(conn)
    .await?
    .rows_affected())
}
