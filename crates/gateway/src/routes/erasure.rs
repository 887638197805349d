//! GDPR erasure, asked by the tenant or by an operator, and the tenant's export. The
//! work is the privacy crate's; this maps it to HTTP.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lifecycle::{Change, TransitionRequest};
use saas_core::TenantId;
use serde::Deserialize;
use tenancy::audit::Actor;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::transitions::{TransitionAccepted, take, valid_reason};
use crate::auth::{Operator, TenantContext};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::request_context::RequestId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_erasure))
        .routes(routes!(operator_erasure))
        .routes(routes!(export_tenant))
}

/// GDPR erasure of the calling tenant. The tenant is `deleted` at once and its API keys
/// stop working with this answer; a job then removes its usage everywhere, its customer
/// at Stripe and its personal data, keeping invoices (stripped) for the legal retention
/// period, the audit log and a deletion record, none of which hold personal data.
#[utoipa::path(post, path = "/v1/tenant/erasure", tag = "tenant", security(("api_key" = [])),
    responses((status = 202, body = TransitionAccepted), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn request_erasure(
    State(state): State<AppState>,
    tenant: TenantContext,
    Extension(request_id): Extension<RequestId>,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    tenant.require_key()?;
    state.tenant_writes.check(tenant.tenant_id)?;
    let request = TransitionRequest {
        tenant_id: tenant.tenant_id,
        change: Change::Erase,
        actor: Actor::Tenant(tenant.key_id),
        reason: Some("erasure requested by the tenant".into()),
        request_id: Some(request_id.0),
        idempotency_key: None,
    };
    take(&state, request).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OperatorErasureRequest {
    /// Why, for the audit log (no personal data).
    reason: String,
}

/// GDPR erasure of a tenant, by an operator. Asking again answers with the first
/// erasure.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/erasure", tag = "admin",
    security(("operator_token" = [])), request_body = OperatorErasureRequest,
    params(("id" = String, Path, description = "The tenant's id, `ten_...`")),
    responses((status = 202, body = TransitionAccepted), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn operator_erasure(
    State(state): State<AppState>,
    _operator: Operator,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OperatorErasureRequest>,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    let tenant_id: TenantId = id.parse().map_err(|_| ApiError::not_found("tenant"))?;
    let request = TransitionRequest {
        tenant_id,
        change: Change::Erase,
        actor: Actor::Operator,
        reason: Some(valid_reason(&body.reason)?),
        request_id: Some(request_id.0),
        idempotency_key: None,
    };
    take(&state, request).await
}

/// GDPR export: everything held about the calling tenant, as one JSON document, streamed
/// as it is read (any size, flat memory). Works while the tenant is suspended. One export
/// per tenant runs at a time (429 `export_in_progress`).
#[utoipa::path(get, path = "/v1/tenant/export", tag = "tenant", security(("api_key" = [])),
    responses((status = 200, description = "The export document", body = Object),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn export_tenant(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Response> {
    state.tenant_writes.check(tenant.tenant_id)?;
    let slot = state.exports.take(tenant.tenant_id)?;
    let chunks = privacy::export::export(&state.db, &state.clickhouse, tenant.tenant_id)
        .await
        .map_err(|error| match error {
            privacy::export::ExportError::Usage(usage) => {
                ApiError::unavailable("usage_store_unavailable", usage)
            }
            privacy::export::ExportError::Store(store) => store.into(),
            privacy::export::ExportError::ClientGone => ApiError::internal(error),
        })?;
    // The slot lives as long as the body: it is freed when the download ends or breaks.
    let body = futures_util::stream::unfold((chunks, slot), |(mut chunks, slot)| async move {
        chunks.recv().await.map(|chunk| (chunk, (chunks, slot)))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
