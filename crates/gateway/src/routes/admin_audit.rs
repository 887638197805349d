use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use tenancy::audit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Operator;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only entries about this tenant.
    tenant_id: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditEntryView {
    /// Position in the chain.
    seq: i64,
    tenant_id: Option<TenantId>,
    actor: String,
    action: String,
    from_state: Option<String>,
    to_state: Option<String>,
    reason: Option<String>,
    request_id: Option<String>,
    details: serde_json::Value,
    at: DateTime<Utc>,
    /// SHA-256 over this entry and the previous entry's hash, hex.
    hash: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditPage {
    entries: Vec<AuditEntryView>,
    next_after: Option<i64>,
}

/// The audit log in chain order, optionally of one tenant.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("operator_token" = [])),
    params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_audit(
    State(state): State<AppState>,
    _operator: Operator,
    Query(params): Query<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let tenant = params
        .tenant_id
        .map(|id| id.parse::<TenantId>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_tenant_id", e.to_string()))?;
    seal(&state).await?;
    let mut tx = state.db.system_tx("operator audit list").await?;
    let entries = audit::list(&mut tx, tenant, params.after.unwrap_or(0), limit).await?;
    tx.commit().await?;
    let next_after = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.chain_seq))
        .flatten();
    Ok(Json(AuditPage {
        entries: entries
            .into_iter()
            .map(|e| AuditEntryView {
                seq: e.chain_seq,
                tenant_id: e.tenant_id.map(TenantId::from_uuid),
                actor: e.actor,
                action: e.action,
                from_state: e.from_state,
                to_state: e.to_state,
                reason: e.reason,
                request_id: e.request_id,
                details: e.details,
                at: e.created_at,
                hash: hex_string(&e.hash),
            })
            .collect(),
        next_after,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct ChainVerification {
    /// True when every entry's hash matches its content and its predecessor.
    valid: bool,
    entries: i64,
    /// Chain position of the first entry that does not match.
    first_broken_seq: Option<i64>,
}

/// Recomputes the whole audit chain and reports the first entry that was changed,
/// removed or inserted out of band.
#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin", security(("operator_token" = [])),
    responses((status = 200, body = ChainVerification), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn verify_audit(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<Json<ChainVerification>> {
    seal(&state).await?;
    let mut tx = state.db.system_tx("audit chain verification").await?;
    let report = audit::verify_chain(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(ChainVerification {
        valid: report.first_broken.is_none(),
        entries: report.entries,
        first_broken_seq: report.first_broken,
    }))
}

/// Seals what is waiting, so that an operator reads the log up to this moment.
async fn seal(state: &AppState) -> ApiResult<()> {
    audit::seal_pending(&state.db).await?;
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
