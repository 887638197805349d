//! A suspended tenant coming back by itself. The use case is billing's
//! (`billing::collection::reactivate`); this maps it to HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use lifecycle::{Change, TransitionRequest};
use serde::Deserialize;
use tenancy::audit::Actor;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::transitions::{TransitionAccepted, accepted, taken, transition_error};
use crate::auth::TenantContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::idempotency::IdempotencyKey;
use crate::json::ApiJson;
use crate::request_context::RequestId;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(request_reactivation))
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
        return Ok(accepted(first));
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
    Ok(taken(&state, tenant.tenant_id, transition))
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
