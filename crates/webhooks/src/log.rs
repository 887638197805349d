//! The per-endpoint delivery log, and sending an event again.

use chrono::{DateTime, Utc};
use db::StoreError;
use saas_core::{TenantId, WebhookEndpointId, WebhookEventId};
use sqlx::PgConnection;
use uuid::Uuid;

/// One event's delivery to one endpoint, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    #[sqlx(try_from = "Uuid")]
    pub event_id: EventIdColumn,
    pub event_type: String,
    /// `pending`, `succeeded`, `failed` (no attempt left) or `skipped` (the endpoint was
    /// off when its turn came).
    pub status: String,
    pub attempts: i32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub last_response: Option<String>,
    pub succeeded_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An event id read from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventIdColumn(pub WebhookEventId);

impl From<Uuid> for EventIdColumn {
    fn from(uuid: Uuid) -> Self {
        Self(WebhookEventId::from_uuid(uuid))
    }
}

const SELECT: &str = "SELECT d.event_id, v.type AS event_type, d.status, d.attempts, \
        d.last_attempt_at, d.next_attempt_at, d.last_status, d.last_error, d.last_response, \
        d.succeeded_at, d.created_at \
     FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id";

/// The endpoint's deliveries, newest first, at most `limit`; `NotFound` when the
/// endpoint is not the tenant's.
pub async fn deliveries(
    conn: &mut PgConnection,
    tenant: TenantId,
    endpoint: WebhookEndpointId,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    crate::endpoints::get(conn, tenant, endpoint).await?;
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE d.tenant_id = $1 AND d.endpoint_id = $2 \
         ORDER BY d.created_at DESC, d.id DESC LIMIT $3"
    )))
    .bind(tenant.as_uuid())
    .bind(endpoint.as_uuid())
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Sends one of the tenant's events to one of its endpoints again, with a fresh round
/// of attempts, whatever became of earlier ones (also to an endpoint that did not
/// exist or did not subscribe when the event happened). The receiver sees the same
/// `webhook-id`. `NotFound` when either is not the tenant's.
pub async fn redeliver(
    conn: &mut PgConnection,
    tenant: TenantId,
    endpoint: WebhookEndpointId,
    event: WebhookEventId,
) -> Result<Delivery, StoreError> {
    crate::endpoints::get(conn, tenant, endpoint).await?;
    let known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM webhook_events WHERE tenant_id = $1 AND id = $2)",
    )
    .bind(tenant.as_uuid())
    .bind(event.as_uuid())
    .fetch_one(&mut *conn)
    .await?;
    if !known {
        return Err(StoreError::NotFound);
    }
    let (delivery, round): (Uuid, i32) = sqlx::query_as(
        "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id) \
         VALUES (gen_random_uuid(), $1, $2, $3) \
         ON CONFLICT (endpoint_id, event_id) DO UPDATE \
             SET status = 'pending', round = webhook_deliveries.round + 1, \
                 next_attempt_at = now() \
         RETURNING id, round",
    )
    .bind(tenant.as_uuid())
    .bind(endpoint.as_uuid())
    .bind(event.as_uuid())
    .fetch_one(&mut *conn)
    .await?;
    crate::emit::queue(conn, tenant, delivery, endpoint, round).await?;
    Ok(
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE d.id = $1")))
            .bind(delivery)
            .fetch_one(conn)
            .await?,
    )
}
