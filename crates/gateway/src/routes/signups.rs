use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode};
use chrono::{DateTime, Utc};
use onboarding::accept::AcceptError;
use onboarding::request::{SignupRequest, validate};
use onboarding::secrets::IdempotencyScope;
use onboarding::store::{self, SignupStatus, Step};
use saas_core::{SignupId, TenantId};
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::client_address::ClientAddress;
use crate::client_limits::{self, ClientLimit};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::idempotency::IdempotencyKey;
use crate::json::ApiJson;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_signup))
        .routes(routes!(get_signup))
}

#[derive(Serialize, utoipa::ToSchema)]
struct SignupCreated {
    id: SignupId,
    status: SignupStatus,
    /// Read the signup with `Authorization: Bearer <signup_token>`. Shown only here.
    signup_token: String,
}

/// Signs a new tenant up. Payment and provisioning run in the background; poll
/// `GET /v1/signups/{id}` with the token. An `Idempotency-Key` header makes a request
/// retried from the same client address within 24 hours return the first answer; the
/// same key from another address is another request.
#[utoipa::path(post, path = "/v1/signups", tag = "onboarding", request_body = SignupRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key, body and client address: same signup")),
    responses((status = 202, body = SignupCreated), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn create_signup(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(request): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if let Some(wait) = client_limits::admit(&state, ClientLimit::Signups, client).await? {
        return Err(crate::limits::rate_limited_for(
            wait,
            "too many signups from this address; retry later",
        ));
    }
    let plans = {
        let mut conn = state.db.pool().acquire().await?;
        tenancy::plans::list(&mut conn).await?
    };
    let signup = validate(request, &plans)
        .map_err(|invalid| ApiError::unprocessable(invalid.code, invalid.message))?;

    let application = onboarding::accept::Application {
        id: SignupId::new(),
        signup,
        scope: idempotency_key
            .as_deref()
            .map(|key| IdempotencyScope::new(client, key)),
        synthetic: false,
    };
    let accepted = onboarding::accept::accept(&state.db, application)
        .await
        .map_err(|error| match error {
            AcceptError::Exists => signup_exists(),
            AcceptError::KeyReused => {
                ApiError::unprocessable("idempotency_key_reused", error.to_string())
            }
            AcceptError::Store(store) => store.into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(created(accepted.id, accepted.token)?),
    ))
}

fn created(id: SignupId, signup_token: String) -> ApiResult<serde_json::Value> {
    serde_json::to_value(SignupCreated {
        id,
        status: SignupStatus::Pending,
        signup_token,
    })
    .map_err(ApiError::internal)
}

fn signup_exists() -> ApiError {
    // The first signup's token is not handed out again: only its holder may read it.
    ApiError::new(
        StatusCode::CONFLICT,
        "signup_exists",
        "a signup for this email and company is already under way or complete",
    )
}

#[derive(Serialize, utoipa::ToSchema)]
struct SignupView {
    id: SignupId,
    status: SignupStatus,
    tenant_id: Option<TenantId>,
    steps: Vec<Step>,
    /// Time from the signup to now, or to its completion or failure.
    elapsed_ms: i64,
    failure_reason: Option<String>,
    /// The tenant's first API key: on the first read after completion only.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
}

/// A signup's progress, read with its token. Reads after completion carry the tenant's
/// first API key: the first one, and any other within ten minutes of it (so that a lost
/// response does not lose the key); none after. `HEAD` never starts that window.
#[utoipa::path(get, path = "/v1/signups/{id}", tag = "onboarding",
    params(("id" = String, Path, description = "The signup's id, `sgn_...`")),
    responses((status = 200, body = SignupView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_signup(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<SignupView>> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_credentials",
                "send Authorization: Bearer <signup_token>",
            )
        })?;
    let id: SignupId = id.parse().map_err(|_| ApiError::not_found("signup"))?;
    // Under the wall of the tenant the signup becomes.
    let mut tx = state
        .db
        .tenant_tx(TenantId::from_uuid(id.as_uuid()))
        .await?;
    let signup = store::get(&mut tx, id, false)
        .await
        .map_err(ApiError::from_store("signup"))?;
    // A wrong token looks exactly like a signup that does not exist.
    if !bool::from(store::hash_token(token).ct_eq(&signup.token_hash)) {
        return Err(ApiError::not_found("signup"));
    }
    let steps = store::steps(&mut tx, id).await?;
    let api_key = if signup.status == SignupStatus::Completed {
        let look_only = method == Method::HEAD;
        onboarding::secrets::first_key_for_read(&mut tx, id, token, look_only).await?
    } else {
        None
    };
    tx.commit().await?;
    let end: DateTime<Utc> = signup.completed_at.unwrap_or_else(|| state.clock.now());
    Ok(Json(SignupView {
        id,
        status: signup.status,
        tenant_id: signup.tenant_id,
        steps,
        elapsed_ms: (end - signup.created_at).num_milliseconds(),
        failure_reason: signup.failure_reason,
        api_key,
    }))
}
