use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode};
use chrono::{DateTime, Utc};
use onboarding::request::{SignupRequest, validate};
use onboarding::secrets::{FirstKey, IdempotencyScope};
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
/// `GET /v1/signups/{id}` with the token. An `Idempotency-Key` header makes a request
/// retried from the same client address within 24 hours return the first answer; the
/// same key from another address is another request.
#[utoipa::path(post, path = "/v1/signups", tag = "onboarding", request_body = SignupRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key, body and client address: same signup")),
    responses((status = 202, body = SignupCreated), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn create_signup(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(request): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    state
        .signup_limiter
        .check_key(&client.ip())
        .map_err(|not_until| {
            crate::limits::rate_limited(
                &not_until,
                "too many signups from this address; retry later",
            )
        })?;
    let plans = {
        let mut conn = state.db.pool().acquire().await?;
        tenancy::plans::list(&mut conn).await?
    };
    let signup = validate(request, &plans)
        .map_err(|invalid| ApiError::unprocessable(invalid.code, invalid.message))?;

    let scope = idempotency_key
        .as_deref()
        .map(|key| IdempotencyScope::new(client.ip(), key));
    if let Some(scope) = &scope
        && let Some(replay) = replay(&state, scope, &signup.digest()).await?
    {
        return Ok((StatusCode::ACCEPTED, Json(replay)));
    }
    let id = SignupId::new();
    let token = store::new_token();
    let response = created(id, token.clone())?;
    let first_key = FirstKey::new(&token);
    let new = NewSignup {
        id,
        signup: &signup,
        token_hash: store::hash_token(&token),
        first_key: &first_key,
        idempotency: scope.as_ref().map(|scope| store::IdempotentRequest {
            scope_digest: scope.digest(),
            token_sealed: scope.seal_token(&token),
        }),
        synthetic: false,
    };
    let mut tx = state
        .db
        .tenant_tx(TenantId::from_uuid(id.as_uuid()))
        .await?;
    match store::insert(&mut tx, new).await {
        Ok(()) => {}
        // Another request with the same key got there first: answer as it did.
        Err(StoreError::Conflict { constraint }) if constraint == "signups_idempotency_scope" => {
            drop(tx);
            let scope = scope
                .as_ref()
                .expect("only a scoped signup conflicts on its scope");
            return match replay(&state, scope, &signup.digest()).await? {
                Some(first) => Ok((StatusCode::ACCEPTED, Json(first))),
                None => Err(signup_exists()),
            };
        }
        // The same person and company signed up already (and it did not fail). The first
        // signup's token is not handed out again: only its holder may read it.
        Err(StoreError::Conflict { constraint })
            if constraint == "signups_one_live_per_email_and_company" =>
        {
            return Err(signup_exists());
        }
        Err(other) => return Err(other.into()),
    }
    onboarding::workflow::enqueue(&mut tx, id).await?;
    tx.commit().await?;
    metrics::counter!("signups_created_total").increment(1);
    tracing::info!(signup = %id, plan = %signup.plan_code, "signup accepted");
    Ok((StatusCode::ACCEPTED, Json(response)))
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

/// The first answer given under `scope`, if any; 422 if the key was used for another
/// body. A key older than the idempotency window is forgotten and may be used afresh.
async fn replay(
    state: &AppState,
    scope: &IdempotencyScope,
    digest: &[u8],
) -> ApiResult<Option<serde_json::Value>> {
    let mut tx = state.db.system_tx("signup idempotency").await?;
    let found = store::find_by_idempotency_scope(&mut tx, &scope.digest()).await?;
    let Some(found) = found else {
        return Ok(None);
    };
    if found.expired {
        store::forget_idempotency_scope(&mut tx, found.id).await?;
        tx.commit().await?;
        return Ok(None);
    }
    tx.commit().await?;
    if found.request_hash != digest {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different signup",
        ));
    }
    // The first answer was always `pending` with the token; the token is opened with
    // the scope the retry proves it shares.
    match found
        .token_sealed
        .as_deref()
        .and_then(|sealed| scope.open_token(sealed))
    {
        Some(token) => created(SignupId::from_uuid(found.id), token).map(Some),
        None => Err(signup_exists()),
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
