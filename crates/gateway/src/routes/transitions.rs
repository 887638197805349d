//! Tenant transitions: plan changes by the tenant, state changes by an operator, and
//! reading them back. The rules live in the lifecycle crate; this maps them to HTTP.
//! Erasure and export, reactivation and win-back have their own modules.

use axum::extract::{Path, State};
use axum::http::StatusCode;
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
pub(super) struct TransitionAccepted {
    pub(super) transition: Transition,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TransitionList {
    transitions: Vec<Transition>,
}

pub(super) fn transition_error(error: TransitionError) -> ApiError {
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

pub(super) async fn take(
    state: &AppState,
    request: TransitionRequest,
) -> ApiResult<(StatusCode, Json<TransitionAccepted>)> {
    let transition = lifecycle::transitions::begin(&state.db, &request)
        .await
        .map_err(transition_error)?;
    Ok(taken(state, request.tenant_id, transition))
}

/// The answer to a transition just taken. Keys remembered in this process would outlive
/// the state change by up to their TTL: they are forgotten first.
pub(super) fn taken(
    state: &AppState,
    tenant: TenantId,
    transition: Transition,
) -> (StatusCode, Json<TransitionAccepted>) {
    state.key_cache.forget_tenant(tenant);
    accepted(transition)
}

/// 202 with the transition: a new one, or the first answer to a retried request.
pub(super) fn accepted(transition: Transition) -> (StatusCode, Json<TransitionAccepted>) {
    (
        StatusCode::ACCEPTED,
        Json(TransitionAccepted { transition }),
    )
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
pub(super) fn valid_reason(reason: &str) -> ApiResult<String> {
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
