//! Tenant transitions: plan changes by the tenant, state changes by an operator, and
//! reading them back. The rules live in the lifecycle crate; this maps them to HTTP.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lifecycle::{Change, Transition, TransitionError, TransitionRequest};
use saas_core::{TenantId, TenantState, TransitionId};
use serde::{Deserialize, Serialize};
use tenancy::audit::Actor;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Operator, TenantContext};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::idempotency::IdempotencyKey;
use crate::json::ApiJson;
use crate::request_context::RequestId;
use crate::state::AppState;

const MAX_REASON_CHARS: usize = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_plan_change))
        .routes(routes!(list_transitions))
        .routes(routes!(get_transition))
        .routes(routes!(operator_transition))
        .routes(routes!(request_erasure))
        .routes(routes!(operator_erasure))
        .routes(routes!(export_tenant))
        .routes(routes!(request_reactivation))
        .routes(routes!(list_winback_campaigns))
}

/// When a downgrade takes effect. Upgrades always take effect at once.
#[derive(Deserialize, utoipa::ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Effective {
    Now,
    PeriodEnd,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PlanChangeRequest {
    /// The plan to move to.
    plan: String,
    /// Downgrades only: `period_end` (the default) or `now`.
    effective: Option<Effective>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TransitionAccepted {
    transition: Transition,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TransitionList {
    transitions: Vec<Transition>,
}

fn transition_error(error: TransitionError) -> ApiError {
    match error {
        TransitionError::InProgress => ApiError::new(
            StatusCode::CONFLICT,
            "transition_in_progress",
            "another transition of this tenant is running; retry when it has ended",
        ),
        TransitionError::Invalid(invalid) => {
            ApiError::unprocessable("invalid_transition", invalid.to_string())
        }
        TransitionError::SamePlan(plan) => ApiError::unprocessable(
            "invalid_transition",
            format!("the tenant is on plan {plan} already"),
        ),
        TransitionError::UnknownPlan(_) => {
            ApiError::unprocessable("unknown_plan", "no plan has this code")
        }
        TransitionError::IdempotencyKeyReused => ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        ),
        TransitionError::TenantNotFound => ApiError::not_found("tenant"),
        TransitionError::Store(store) => store.into(),
    }
}

async fn take(
    state: &AppState,
    request: TransitionRequest,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    let transition = lifecycle::transitions::begin(&state.db, &request)
        .await
        .map_err(transition_error)?;
    // Keys remembered in this process would outlive a state change by up to their TTL.
    state.key_cache.forget_tenant(request.tenant_id);
    Ok((
        StatusCode::ACCEPTED,
        Json(TransitionAccepted { transition }),
    ))
}

/// Moves the calling tenant to another plan. Upgrades take effect at once; downgrades at
/// the end of the billing period unless `effective` is `now`. The tenant's API keeps
/// serving throughout, under the old limits until the new ones take effect.
#[utoipa::path(post, path = "/v1/tenant/plan-changes", tag = "tenant", security(("api_key" = [])),
    request_body = PlanChangeRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key: the first answer")),
    responses((status = 202, body = TransitionAccepted), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "transition_in_progress"),
              (status = 422, body = ErrorBody, description = "invalid_transition, unknown_plan"),
              (status = 429, body = ErrorBody, description = "rate_limited")))]
async fn request_plan_change(
    State(state): State<AppState>,
    tenant: TenantContext,
    Extension(request_id): Extension<RequestId>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<PlanChangeRequest>,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    state.tenant_writes.check(tenant.tenant_id)?;
    let request = TransitionRequest {
        tenant_id: tenant.tenant_id,
        change: Change::Plan {
            plan: body.plan,
            at_once: body.effective == Some(Effective::Now),
        },
        actor: Actor::Tenant(tenant.key_id),
        reason: None,
        request_id: Some(request_id.0),
        idempotency_key,
    };
    take(&state, request).await
}

/// The calling tenant's transitions, newest first.
#[utoipa::path(get, path = "/v1/tenant/transitions", tag = "tenant", security(("api_key" = [])),
    responses((status = 200, body = TransitionList), (status = 401, body = ErrorBody)))]
async fn list_transitions(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<TransitionList>> {
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let transitions = lifecycle::transitions::list(&mut tx, tenant.tenant_id, 100).await?;
    tx.commit().await?;
    Ok(Json(TransitionList { transitions }))
}

/// One transition of the calling tenant.
#[utoipa::path(get, path = "/v1/tenant/transitions/{id}", tag = "tenant", security(("api_key" = [])),
    params(("id" = String, Path, description = "`trn_...`")),
    responses((status = 200, body = Transition), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_transition(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Transition>> {
    let id: TransitionId = id.parse().map_err(|_| ApiError::not_found("transition"))?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let transition = lifecycle::transitions::get(&mut tx, tenant.tenant_id, id)
        .await
        .map_err(ApiError::from_store("transition"))?;
    tx.commit().await?;
    Ok(Json(transition))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OperatorTransitionRequest {
    /// `suspended`, `active` (reactivation), or `upgrading`/`downgrading` with `plan`.
    to: TenantState,
    /// Why, for the audit log (no personal data): up to 500 characters.
    reason: String,
    /// The plan, for `upgrading` and `downgrading`.
    plan: Option<String>,
    /// Downgrades only: `period_end` (the default) or `now`.
    effective: Option<Effective>,
    /// Suspensions only: whether the tenant may lift it itself with
    /// `POST /v1/tenant/reactivation` (paying with a new card), as for an unpaid bill.
    /// Default false: only an operator lifts it.
    #[serde(default)]
    tenant_may_reactivate: bool,
}

/// Moves a tenant to another state, as an operator: suspension, reactivation or a plan
/// change, under the same rules as the tenant's own requests.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/transitions", tag = "admin",
    security(("operator_token" = [])), request_body = OperatorTransitionRequest,
    params(("id" = String, Path, description = "The tenant's id, `ten_...`"),
           ("Idempotency-Key" = Option<String>, Header, description = "Same key: the first answer")),
    responses((status = 202, body = TransitionAccepted), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn operator_transition(
    State(state): State<AppState>,
    _operator: Operator,
    Extension(request_id): Extension<RequestId>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OperatorTransitionRequest>,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    let tenant_id: TenantId = id.parse().map_err(|_| ApiError::not_found("tenant"))?;
    let reason = valid_reason(&body.reason)?;
    let change = match (body.to, body.plan) {
        (TenantState::Suspended, None) => Change::Suspend {
            tenant_may_reactivate: body.tenant_may_reactivate,
        },
        (TenantState::Active, None) => Change::Reactivate,
        (TenantState::Upgrading | TenantState::Downgrading, Some(plan)) => Change::Plan {
            plan,
            at_once: body.effective == Some(Effective::Now),
        },
        (TenantState::Upgrading | TenantState::Downgrading, None) => {
            return Err(ApiError::unprocessable(
                "plan_required",
                "a plan change needs `plan`",
            ));
        }
        (TenantState::Deleted, _) => {
            return Err(ApiError::unprocessable(
                "invalid_transition",
                "deletion is GDPR erasure: POST /v1/admin/tenants/{id}/erasure",
            ));
        }
        (to, _) => {
            return Err(ApiError::unprocessable(
                "invalid_transition",
                format!("an operator cannot move a tenant to {to}"),
            ));
        }
    };
    let request = TransitionRequest {
        tenant_id,
        change,
        actor: Actor::Operator,
        reason: Some(reason),
        request_id: Some(request_id.0),
        idempotency_key,
    };
    // A plan change must match the plan's direction, as the operator said it.
    if let Change::Plan { plan, .. } = &request.change {
        check_direction(&state, tenant_id, plan, body.to).await?;
    }
    take(&state, request).await
}

/// An operator's reason, for the audit log: 1 to 500 printable characters.
fn valid_reason(reason: &str) -> ApiResult<String> {
    let reason = reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            "invalid_reason",
            "reason must be 1 to 500 printable characters",
        ));
    }
    Ok(reason.to_owned())
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

/// 422 when an operator asks for `upgrading` to a cheaper plan, or the reverse.
async fn check_direction(
    state: &AppState,
    tenant_id: TenantId,
    plan: &str,
    to: TenantState,
) -> ApiResult<()> {
    let mut tx = state.db.tenant_tx(tenant_id).await?;
    let tenant = tenancy::tenants::get(&mut tx, tenant_id)
        .await
        .map_err(ApiError::from_store("tenant"))?;
    let current = tenancy::plans::get(&mut tx, &tenant.plan_code).await?;
    let Ok(new) = tenancy::plans::get(&mut tx, plan).await else {
        return Err(ApiError::unprocessable(
            "unknown_plan",
            "no plan has this code",
        ));
    };
    tx.commit().await?;
    let upgrade = new.rank > current.rank;
    if (to == TenantState::Upgrading) != upgrade {
        return Err(ApiError::unprocessable(
            "invalid_transition",
            format!("{} to {} is not {to}", current.code, new.code),
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct ReactivationRequest {
    /// A new payment method (`pm_...`) to pay with from now on, made the default.
    payment_method: Option<String>,
}

/// A suspended tenant comes back by itself (the way win-back messages point to): with a
/// new payment method when given, its unpaid invoices are charged first (402
/// `payment_failed` if one is declined), then it is active again with every byte intact.
/// Ends a running win-back campaign as won.
#[utoipa::path(post, path = "/v1/tenant/reactivation", tag = "tenant", security(("api_key" = [])),
    request_body = ReactivationRequest,
    responses((status = 202, body = TransitionAccepted), (status = 401, body = ErrorBody),
              (status = 402, body = ErrorBody, description = "payment_method_refused, or payment_failed: an unpaid invoice was declined"),
              (status = 403, body = ErrorBody, description = "reactivation_not_allowed"),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn request_reactivation(
    State(state): State<AppState>,
    tenant: TenantContext,
    Extension(request_id): Extension<RequestId>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<ReactivationRequest>,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    let request = TransitionRequest {
        tenant_id: tenant.tenant_id,
        change: Change::Reactivate,
        actor: Actor::Tenant(tenant.key_id),
        reason: Some("reactivated by the tenant".into()),
        request_id: Some(request_id.0),
        idempotency_key,
    };
    // A retry of a reactivation that went through gets its first answer, before any
    // check of the (now active) state and before anything is charged again.
    if let Some(first) = lifecycle::transitions::answered(&state.db, &request)
        .await
        .map_err(transition_error)?
    {
        return Ok((
            StatusCode::ACCEPTED,
            Json(TransitionAccepted { transition: first }),
        ));
    }
    state.tenant_writes.check(tenant.tenant_id)?;
    let ask = billing::collection::Reactivation {
        request,
        payment_method: body.payment_method,
        may_change_payment_method: tenant.require_key().is_ok(),
    };
    let transition = billing::collection::reactivate(&state.db, state.collector().as_ref(), ask)
        .await
        .map_err(reactivation_error)?;
    // Keys remembered in this process would outlive a state change by up to their TTL.
    state.key_cache.forget_tenant(tenant.tenant_id);
    Ok((
        StatusCode::ACCEPTED,
        Json(TransitionAccepted { transition }),
    ))
}

fn reactivation_error(error: billing::collection::ReactivationError) -> ApiError {
    use billing::collection::ReactivationError as E;
    match error {
        E::NotSuspended(_) => ApiError::unprocessable("invalid_transition", error.to_string()),
        E::OnlyByOperator => ApiError::forbidden("reactivation_not_allowed", error.to_string()),
        E::KeyRequired => ApiError::key_required(),
        E::BillingNotConfigured => {
            ApiError::unprocessable("billing_not_configured", error.to_string())
        }
        E::PaymentMethodRefused(refused) => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_method_refused",
            refused.to_string(),
        ),
        E::ProviderUnavailable(unavailable) => {
            ApiError::unavailable("payment_provider_unavailable", unavailable)
        }
        E::PaymentFailed { .. } => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_failed",
            error.to_string(),
        ),
        E::Transition(transition) => transition_error(transition),
        E::Store(store) => store.into(),
        E::Collect(collect) => ApiError::internal(collect),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
struct CampaignFilter {
    /// `running`, `won`, `ended` or `exhausted`.
    status: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CampaignList {
    campaigns: Vec<lifecycle::winback::CampaignView>,
}

/// Win-back campaigns and where each stands, newest first.
#[utoipa::path(get, path = "/v1/admin/winback/campaigns", tag = "admin",
    security(("operator_token" = [])), params(CampaignFilter),
    responses((status = 200, body = CampaignList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_winback_campaigns(
    State(state): State<AppState>,
    _operator: Operator,
    axum::extract::Query(filter): axum::extract::Query<CampaignFilter>,
) -> ApiResult<Json<CampaignList>> {
    if let Some(status) = &filter.status
        && !["running", "won", "ended", "exhausted"].contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            "unknown campaign status",
        ));
    }
    let mut tx = state.db.system_tx("operator win-back list").await?;
    let campaigns = lifecycle::winback::list(&mut tx, filter.status.as_deref(), 500).await?;
    tx.commit().await?;
    Ok(Json(CampaignList { campaigns }))
}
