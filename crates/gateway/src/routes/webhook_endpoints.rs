//! A tenant's webhook endpoints: where its events are sent, signed by the Standard
//! Webhooks scheme, and the log of what was delivered.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use saas_core::{WebhookEndpointId, WebhookEventId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use webhooks::endpoints::{self, Endpoint, EndpointChange, NewEndpoint};
use webhooks::log::{self, Delivery};

use crate::auth::TenantContext;
use crate::config::MAX_SECRET_OVERLAP_SECS;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::state::AppState;

const MAX_DESCRIPTION_CHARS: usize = 200;
const MAX_EVENT_TYPES: usize = 64;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    /// Where events are POSTed: https, and a public address.
    url: String,
    /// The event types to receive (see the `webhooks` of this document), or `["*"]`.
    events: Vec<String>,
    /// A note for people, up to 200 printable characters.
    description: Option<String>,
    /// Default true.
    enabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateEndpoint {
    url: Option<String>,
    events: Option<Vec<String>>,
    description: Option<String>,
    /// Turning an endpoint on clears why the service had turned it off.
    enabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    /// How long the current secret keeps signing beside the new one, in seconds (at
    /// most 604800, 7 days; default `webhooks.secret_overlap_secs`, one day).
    overlap_secs: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct EndpointView {
    /// `we_...`
    id: WebhookEndpointId,
    url: String,
    events: Vec<String>,
    description: String,
    enabled: bool,
    /// Why the service turned the endpoint off (every delivery failing for about three
    /// days), when it did.
    disabled_reason: Option<String>,
    /// Until when the previous secret still signs, during a rotation.
    previous_secret_expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Endpoint> for EndpointView {
    fn from(endpoint: Endpoint) -> Self {
        Self {
            id: endpoint.id,
            url: endpoint.url,
            events: endpoint.events,
            description: endpoint.description,
            enabled: endpoint.enabled,
            disabled_reason: endpoint.disabled_reason,
            previous_secret_expires_at: endpoint.previous_secret_until,
            created_at: endpoint.created_at,
            updated_at: endpoint.updated_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct EndpointWithSecret {
    #[serde(flatten)]
    endpoint: EndpointView,
    /// The signing secret (`whsec_...`), for a Standard Webhooks library. Shown only in
    /// this response; store it now.
    secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct EndpointList {
    webhook_endpoints: Vec<EndpointView>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryView {
    /// `evt_...`: also the `webhook-id` header of every attempt.
    event_id: WebhookEventId,
    event_type: String,
    /// `pending`, `succeeded`, `failed` (no attempt left) or `skipped` (the endpoint
    /// was off when its turn came).
    status: String,
    attempts: i32,
    last_attempt_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's HTTP status at the last attempt; absent when it did not answer.
    last_status: Option<i32>,
    last_error: Option<String>,
    /// The first 256 characters of the receiver's last answer.
    last_response: Option<String>,
    succeeded_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(delivery: Delivery) -> Self {
        Self {
            event_id: delivery.event_id.0,
            event_type: delivery.event_type,
            status: delivery.status,
            attempts: delivery.attempts,
            last_attempt_at: delivery.last_attempt_at,
            next_attempt_at: delivery.next_attempt_at,
            last_status: delivery.last_status,
            last_error: delivery.last_error,
            last_response: delivery.last_response,
            succeeded_at: delivery.succeeded_at,
            created_at: delivery.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryList {
    deliveries: Vec<DeliveryView>,
}

#[derive(Deserialize, utoipa::IntoParams)]
struct DeliveryQuery {
    /// At most this many, newest first (1 to 100, default 50).
    limit: Option<i64>,
}

async fn checked_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    state
        .webhooks
        .check_destination(url)
        .await
        .map(|url| url.to_string())
        .map_err(|refused| ApiError::unprocessable(refused.code, refused.message))
}

fn checked_events(events: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut events: Vec<String> = events.into_iter().map(|e| e.trim().to_owned()).collect();
    events.sort();
    events.dedup();
    if events.is_empty() || events.len() > MAX_EVENT_TYPES {
        return Err(ApiError::unprocessable(
            "invalid_events",
            format!("events must name 1 to {MAX_EVENT_TYPES} event types, or \"*\""),
        ));
    }
    if let Some(unknown) = events.iter().find(|e| !webhooks::is_known_type(e)) {
        return Err(ApiError::unprocessable(
            "unknown_event_type",
            format!("{unknown:?} is not an event type; see the webhooks of /openapi.json"),
        ));
    }
    Ok(events)
}

fn checked_description(description: String) -> Result<String, ApiError> {
    let description = description.trim().to_owned();
    if description.chars().count() > MAX_DESCRIPTION_CHARS
        || description.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            "invalid_description",
            format!("description must be at most {MAX_DESCRIPTION_CHARS} printable characters"),
        ));
    }
    Ok(description)
}

fn endpoint_id(id: &str) -> Result<WebhookEndpointId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found("webhook endpoint"))
}

/// Registers an endpoint that receives the calling tenant's events. The signing secret
/// is in this response only. A tenant has at most 16 endpoints (409
/// `too_many_webhook_endpoints`). URLs must be https and reach a public address (422
/// `invalid_webhook_url`, `webhook_url_forbidden`).
#[utoipa::path(post, path = "/v1/webhook-endpoints", tag = "webhooks", security(("api_key" = [])),
    request_body = CreateEndpoint,
    responses((status = 201, body = EndpointWithSecret), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "api_key_required: not from a dashboard session"),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn create_endpoint(
    State(state): State<AppState>,
    tenant: TenantContext,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> ApiResult<(StatusCode, Json<EndpointWithSecret>)> {
    tenant.require_key()?;
    let new = NewEndpoint {
        url: checked_url(&state, &body.url).await?,
        events: checked_events(body.events)?,
        description: checked_description(body.description.unwrap_or_default())?,
        enabled: body.enabled.unwrap_or(true),
    };
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let (endpoint, secret) = endpoints::create(&mut tx, tenant.tenant_id, &new)
        .await
        .map_err(|error| match error {
            endpoints::CreateError::TooMany => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_webhook_endpoints",
                error.to_string(),
            ),
            endpoints::CreateError::Store(store) => store.into(),
        })?;
    tx.commit().await?;
    let view = EndpointWithSecret {
        endpoint: endpoint.into(),
        secret,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Lists the calling tenant's endpoints, oldest first. Secrets are never shown.
#[utoipa::path(get, path = "/v1/webhook-endpoints", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, body = EndpointList), (status = 401, body = ErrorBody)))]
async fn list_endpoints(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<EndpointList>> {
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let list = endpoints::list(&mut tx, tenant.tenant_id).await?;
    tx.commit().await?;
    Ok(Json(EndpointList {
        webhook_endpoints: list.into_iter().map(EndpointView::from).collect(),
    }))
}

/// One of the calling tenant's endpoints.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id, `we_...`")),
    responses((status = 200, body = EndpointView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_endpoint(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointView>> {
    let id = endpoint_id(&id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let endpoint = endpoints::get(&mut tx, tenant.tenant_id, id)
        .await
        .map_err(ApiError::from_store("webhook endpoint"))?;
    tx.commit().await?;
    Ok(Json(endpoint.into()))
}

/// Changes an endpoint: its URL, event types, description, or whether it is on.
#[utoipa::path(patch, path = "/v1/webhook-endpoints/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id, `we_...`")),
    request_body = UpdateEndpoint,
    responses((status = 200, body = EndpointView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn update_endpoint(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> ApiResult<Json<EndpointView>> {
    tenant.require_key()?;
    let id = endpoint_id(&id)?;
    let change = EndpointChange {
        url: match body.url {
            Some(url) => Some(checked_url(&state, &url).await?),
            None => None,
        },
        events: body.events.map(checked_events).transpose()?,
        description: body.description.map(checked_description).transpose()?,
        enabled: body.enabled,
    };
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let endpoint = endpoints::update(&mut tx, tenant.tenant_id, id, &change)
        .await
        .map_err(ApiError::from_store("webhook endpoint"))?;
    tx.commit().await?;
    Ok(Json(endpoint.into()))
}

/// Deletes an endpoint and its delivery log; nothing more is sent to it.
#[utoipa::path(delete, path = "/v1/webhook-endpoints/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id, `we_...`")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn delete_endpoint(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    tenant.require_key()?;
    let id = endpoint_id(&id)?;
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    endpoints::delete(&mut tx, tenant.tenant_id, id)
        .await
        .map_err(ApiError::from_store("webhook endpoint"))?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives the endpoint a new signing secret, shown only in this response. The current
/// one keeps signing beside it (every delivery carries both signatures) for the
/// overlap, so the receiver can switch without missing a delivery.
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhooks",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id, `we_...`")),
    request_body = RotateSecret,
    responses((status = 200, body = EndpointWithSecret), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn rotate_secret(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> ApiResult<Json<EndpointWithSecret>> {
    tenant.require_key()?;
    let id = endpoint_id(&id)?;
    let overlap = body
        .overlap_secs
        .unwrap_or(state.config.webhooks.secret_overlap_secs);
    if overlap > MAX_SECRET_OVERLAP_SECS {
        return Err(ApiError::unprocessable(
            "invalid_overlap",
            format!("overlap_secs must be at most {MAX_SECRET_OVERLAP_SECS} (7 days)"),
        ));
    }
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let (endpoint, secret) = endpoints::rotate_secret(
        &mut tx,
        tenant.tenant_id,
        id,
        std::time::Duration::from_secs(overlap),
    )
    .await
    .map_err(ApiError::from_store("webhook endpoint"))?;
    tx.commit().await?;
    Ok(Json(EndpointWithSecret {
        endpoint: endpoint.into(),
        secret,
    }))
}

/// The endpoint's delivery log, newest first: each event's status, attempts, and the
/// receiver's last answer.
#[utoipa::path(get, path = "/v1/webhook-endpoints/{id}/deliveries", tag = "webhooks",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id, `we_...`"), DeliveryQuery),
    responses((status = 200, body = DeliveryList), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list_deliveries(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let id = endpoint_id(&id)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_limit",
            "limit must be between 1 and 100",
        ));
    }
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let deliveries = log::deliveries(&mut tx, tenant.tenant_id, id, limit)
        .await
        .map_err(ApiError::from_store("webhook endpoint"))?;
    tx.commit().await?;
    Ok(Json(DeliveryList {
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
    }))
}

/// Sends one of the tenant's events to the endpoint again, with a fresh round of
/// attempts (with the same `webhook-id`, so a receiver that had it can drop it).
#[utoipa::path(post, path = "/v1/webhook-endpoints/{id}/events/{event_id}/redeliver",
    tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path, description = "The endpoint's id, `we_...`"),
           ("event_id" = String, Path, description = "The event's id, `evt_...`")),
    responses((status = 202, body = DeliveryView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn redeliver(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path((id, event_id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<DeliveryView>)> {
    let id = endpoint_id(&id)?;
    let event: WebhookEventId = event_id.parse().map_err(|_| ApiError::not_found("event"))?;
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let delivery = log::redeliver(&mut tx, tenant.tenant_id, id, event)
        .await
        .map_err(ApiError::from_store("webhook endpoint or event"))?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(delivery.into())))
}
