//! A tenant's webhook endpoints: the URL, the event types it subscribes to, whether it
//! is on, and its signing secrets. Every function takes the tenant's transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use db::StoreError;
use saas_core::{TenantId, WebhookEndpointId};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::signing;

/// Endpoints one tenant may have.
pub const MAX_ENDPOINTS: i64 = 16;

/// An endpoint as its owner sees it (never its secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: WebhookEndpointId,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why the service turned it off (it kept failing), when it did.
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs, during a rotation.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    url: String,
    events: Vec<String>,
    description: String,
    enabled: bool,
    disabled_reason: Option<String>,
    previous_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for Endpoint {
    fn from(row: Row) -> Self {
        Self {
            id: WebhookEndpointId::from_uuid(row.id),
            url: row.url,
            events: row.events,
            description: row.description,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            // Past its end, an overlap is over: show none.
            previous_secret_until: row.previous_until.filter(|until| *until > Utc::now()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str = "id, url, events, description, enabled, disabled_reason, previous_until, created_at, updated_at";

/// What a new endpoint is; the URL and event types are already checked.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a tenant may have {MAX_ENDPOINTS} webhook endpoints")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates an endpoint; answers it with its signing secret, which is shown only now.
pub async fn create(
    conn: &mut PgConnection,
    tenant: TenantId,
    new: &NewEndpoint,
) -> Result<(Endpoint, String), CreateError> {
    // Serialises the tenant's creations, so that the count below is exact.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('webhook endpoints:' || $1, 0))")
        .bind(tenant.as_uuid().to_string())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::from)?;
    if count >= MAX_ENDPOINTS {
        return Err(CreateError::TooMany);
    }
    let secret = signing::new_secret();
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, events, description, enabled, secret) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(WebhookEndpointId::new().as_uuid())
    .bind(tenant.as_uuid())
    .bind(&new.url)
    .bind(&new.events)
    .bind(&new.description)
    .bind(new.enabled)
    .bind(&secret)
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    Ok((row.into(), secret))
}

/// The tenant's endpoints, oldest first.
pub async fn list(conn: &mut PgConnection, tenant: TenantId) -> Result<Vec<Endpoint>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, id"
    )))
    .bind(tenant.as_uuid())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Endpoint::from).collect())
}

/// One of the tenant's endpoints; `NotFound` for any other id.
pub async fn get(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: WebhookEndpointId,
) -> Result<Endpoint, StoreError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?;
    row.map(Endpoint::from).ok_or(StoreError::NotFound)
}

/// A change to an endpoint: what is `Some` is set.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// Applies `change`. Turning an endpoint on clears why the service had turned it off.
pub async fn update(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: WebhookEndpointId,
    change: &EndpointChange,
) -> Result<Endpoint, StoreError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET url = coalesce($3, url), events = coalesce($4, events), \
                description = coalesce($5, description), enabled = coalesce($6, enabled), \
                disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
                updated_at = now() \
         WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .bind(&change.url)
    .bind(&change.events)
    .bind(&change.description)
    .bind(change.enabled)
    .fetch_optional(conn)
    .await?;
    row.map(Endpoint::from).ok_or(StoreError::NotFound)
}

/// Deletes an endpoint and its delivery log; deliveries waiting for it are not sent.
pub async fn delete(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: WebhookEndpointId,
) -> Result<(), StoreError> {
    let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.as_uuid())
        .bind(id.as_uuid())
        .execute(conn)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Gives the endpoint a new secret, shown only now. The current one keeps signing
/// beside it for `overlap`, so receivers can switch without missing a delivery.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: WebhookEndpointId,
    overlap: Duration,
) -> Result<(Endpoint, String), StoreError> {
    let secret = signing::new_secret();
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $3, \
                previous_until = now() + make_interval(secs => $4), updated_at = now() \
         WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .bind(&secret)
    .bind(overlap.as_secs_f64())
    .fetch_optional(conn)
    .await?;
    row.map(|row| (row.into(), secret))
        .ok_or(StoreError::NotFound)
}
