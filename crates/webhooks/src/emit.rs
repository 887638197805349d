//! Writing an event, in the transaction of the change that caused it: the event, one
//! delivery per enabled endpoint that subscribes to its type, and one job per delivery.
//! A change that rolls back leaves none of them; one that commits is delivered even if
//! the process dies the next moment. The mail that goes with some events is written
//! here too ([`crate::mail`]).

use chrono::Utc;
use db::StoreError;
use jobs::{JobKind, JobOptions};
use saas_core::{TenantId, WebhookEndpointId, WebhookEventId};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::delivery::DeliverWebhook;
use crate::events::{Event, EventData, PAYLOAD_VERSION};

/// Records `data` as an event of `tenant` on `conn` (the caller's transaction) and
/// queues its deliveries. Returns the event's id.
pub async fn emit(
    conn: &mut PgConnection,
    tenant: TenantId,
    data: EventData,
) -> Result<WebhookEventId, StoreError> {
    let event = Event {
        id: WebhookEventId::new(),
        timestamp: Utc::now(),
        version: PAYLOAD_VERSION,
        tenant_id: tenant,
        data,
    };
    let type_name = event.data.type_name();
    let body = serde_json::to_string(&event)
        .map_err(|error| StoreError::Corrupt(format!("a {type_name} event: {error}")))?;
    sqlx::query(
        "INSERT INTO webhook_events (id, tenant_id, type, body, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event.id.as_uuid())
    .bind(tenant.as_uuid())
    .bind(type_name)
    .bind(&body)
    .bind(event.timestamp)
    .execute(&mut *conn)
    .await?;
    let deliveries: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id) \
         SELECT gen_random_uuid(), $1, id, $2 FROM webhook_endpoints \
         WHERE tenant_id = $1 AND enabled AND (events @> ARRAY[$3] OR events @> ARRAY['*']) \
         RETURNING id, endpoint_id",
    )
    .bind(tenant.as_uuid())
    .bind(event.id.as_uuid())
    .bind(type_name)
    .fetch_all(&mut *conn)
    .await?;
    for (delivery, endpoint) in deliveries {
        queue(
            conn,
            tenant,
            delivery,
            WebhookEndpointId::from_uuid(endpoint),
            0,
        )
        .await?;
    }
    crate::mail::for_event(conn, &event).await?;
    metrics::counter!("webhook_events_total", "type" => type_name).increment(1);
    Ok(event.id)
}

/// Queues round `round` of a delivery's attempts.
pub(crate) async fn queue(
    conn: &mut PgConnection,
    tenant: TenantId,
    delivery: Uuid,
    endpoint: WebhookEndpointId,
    round: i32,
) -> Result<(), StoreError> {
    DeliverWebhook {
        delivery,
        tenant,
        endpoint,
        round,
    }
    .enqueue(
        conn,
        JobOptions::dedup_key(format!("{delivery}:{round}"))
            .max_attempts(crate::delivery::MAX_ATTEMPTS),
    )
    .await?;
    Ok(())
}
