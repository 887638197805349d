use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use onboarding::request::{SignupRequest, validate};
use onboarding::store::{self, NewSignup, SignupStatus, Step};
use saas_core::{SignupId, TenantId};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tenancy::StoreError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
/// `GET /v1/signups/{id}` with the token. An `Idempotency-Key` header makes a retried
/// request return the first answer.
#[utoipa::path(post, path = "/v1/signups", tag = "onboarding", request_body = SignupRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: same signup")),
    responses((status = 202, body = SignupCreated), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn create_signup(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(request): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if let Err(not_until) = state.signup_limiter.check_key(&client.ip()) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many signups from this address; retry later",
        );
        error.retry_after_secs = Some(wait.as_secs().max(1));
        return Err(error);
    }
    let plans = {
        let mut conn = state.db.pool().acquire().await?;
        tenancy::plans::list(&mut conn).await?
    };
    let signup = validate(request, &plans)
        .map_err(|invalid| ApiError::unprocessable(invalid.code, invalid.message))?;

    if let Some(key) = &idempotency_key
        && let Some(replay) = replay(&state, key, &signup.digest()).await?
    {
        return Ok((StatusCode::ACCEPTED, Json(replay)));
    }
    let id = SignupId::new();
    let token = store::new_token();
    let response = serde_json::to_value(SignupCreated {
        id,
        status: SignupStatus::Pending,
        signup_token: token.clone(),
    })
    .map_err(ApiError::internal)?;
    let mut tx = state.db.system_tx("signup").await?;
    let new = NewSignup {
        id,
        signup: &signup,
        token_hash: store::hash_token(&token),
        idempotency_key: idempotency_key.as_deref(),
        synthetic: false,
    };
    match store::insert(&mut tx, new).await {
        Ok(()) => {}
        // Another request with the same key got there first: answer as it did.
        Err(StoreError::Conflict { constraint }) if constraint == "signups_idempotency_key" => {
            drop(tx);
            let key = idempotency_key.as_deref().unwrap_or_default();
            return match replay(&state, key, &signup.digest()).await? {
                Some(first) => Ok((StatusCode::ACCEPTED, Json(first))),
                None => Err(ApiError::internal(anyhow::anyhow!(
                    "idempotent signup vanished"
                ))),
            };
        }
        // The same person and company signed up already (and it did not fail). The first
        // signup's token is not handed out again: only its holder may read it.
        Err(StoreError::Conflict { constraint })
            if constraint == "signups_one_live_per_email_and_company" =>
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "signup_exists",
                "a signup for this email and company is already under way or complete",
            ));
        }
        Err(other) => return Err(other.into()),
    }
    if idempotency_key.is_some() {
        store::set_first_response(&mut tx, id, &response).await?;
    }
    onboarding::workflow::enqueue(&mut tx, id).await?;
    tx.commit().await?;
    metrics::counter!("signups_created_total").increment(1);
    tracing::info!(signup = %id, plan = %signup.plan_code, "signup accepted");
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// The first answer given for `key`, if any; 422 if the key was used for another body.
async fn replay(
    state: &AppState,
    key: &str,
    digest: &[u8],
) -> ApiResult<Option<serde_json::Value>> {
    let mut tx = state.db.system_tx("signup idempotency").await?;
    let found = store::find_by_idempotency_key(&mut tx, key).await?;
    tx.commit().await?;
    match found {
        None => Ok(None),
        Some((stored_digest, _)) if stored_digest != digest => Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different signup",
        )),
        Some((_, first)) => Ok(first),
    }
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

/// A signup's progress, read with its token. The first read after completion carries
/// the tenant's first API key; no later read does.
#[utoipa::path(get, path = "/v1/signups/{id}", tag = "onboarding",
    params(("id" = String, Path, description = "The signup's id, `sgn_...`")),
    responses((status = 200, body = SignupView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_signup(
    State(state): State<AppState>,
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
    let mut tx = state.db.system_tx("signup read").await?;
    let signup = store::get(&mut tx, id, false)
        .await
        .map_err(ApiError::from_store("signup"))?;
    // A wrong token looks exactly like a signup that does not exist.
    if !bool::from(store::hash_token(token).ct_eq(&signup.token_hash)) {
        return Err(ApiError::not_found("signup"));
    }
    let steps = store::steps(&mut tx, id).await?;
    let api_key = if signup.status == SignupStatus::Completed {
        store::take_api_key(&mut tx, id).await?
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
