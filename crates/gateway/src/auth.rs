//! Who is calling. The tenant always comes from the API key presented, never from the
//! request body or a header the client chooses.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use saas_core::{ApiKeyId, TenantId, TenantState};
use secrecy::ExposeSecret;
use sha2::Digest;
use subtle::ConstantTimeEq;
use tenancy::api_keys;

use crate::error::ApiError;
use crate::key_cache::Cached;
use crate::state::AppState;

/// An authenticated tenant request.
#[derive(Debug, Clone, Copy)]
pub struct TenantContext {
    pub tenant_id: TenantId,
    pub key_id: ApiKeyId,
    pub state: TenantState,
    /// Authenticated by a dashboard session rather than the key itself. Actions that
    /// outlive or widen access (new keys, erasure, payment methods) want the key.
    pub via_session: bool,
}

impl TenantContext {
    /// 403 unless the request presented the API key itself.
    pub fn require_key(&self) -> Result<(), ApiError> {
        if self.via_session {
            return Err(ApiError::key_required());
        }
        Ok(())
    }
}

/// An authenticated operator request (`Authorization: Bearer <operator token>`).
#[derive(Debug, Clone, Copy)]
pub struct Operator;

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_credentials",
            "send Authorization: Bearer <api key>",
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "malformed_credentials",
                "the Authorization header must be `Bearer <api key>`",
            )
        })
}

/// The owner of a presented key. Cheap refusals first: a token that is not shaped like
/// one of our keys never reaches the store, and a key found unknown a moment ago is not
/// looked up again.
async fn key_owner(state: &AppState, secret: &str) -> Result<Option<api_keys::KeyOwner>, ApiError> {
    if !api_keys::is_well_formed(secret) {
        return Ok(None);
    }
    let digest = api_keys::hash_secret(secret);
    match state.key_cache.get(&digest) {
        Some(Cached::Owner(owner)) => return Ok(Some(owner)),
        Some(Cached::Unknown) => return Ok(None),
        None => {}
    }
    let mut tx = state.db.system_tx("authenticate API key").await?;
    let owner = api_keys::authenticate(&mut tx, secret).await?;
    tx.commit().await?;
    let cached = owner.map_or(Cached::Unknown, Cached::Owner);
    state.key_cache.insert(digest, cached);
    Ok(owner)
}

impl FromRequestParts<AppState> for TenantContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The dashboard's browser session, when no key is presented.
        if parts.headers.get(AUTHORIZATION).is_none()
            && let Some(token) = cookie(parts, SESSION_COOKIE)
        {
            return session_context(parts, state, token).await;
        }
        let secret = bearer_token(parts)?;
        let owner = key_owner(state, secret).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_api_key", "the API key is unknown or revoked")
        })?;
        tracing::Span::current().record("tenant_id", tracing::field::display(owner.tenant_id));
        Ok(TenantContext {
            tenant_id: owner.tenant_id,
            key_id: owner.key_id,
            state: owner.tenant_state,
            via_session: false,
        })
    }
}

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "__Host-saas_session";
/// The operator view's (read-only) session cookie.
pub const OPERATOR_SESSION_COOKIE: &str = "__Host-saas_operator_session";

/// Whether `presented` is the configured operator token (compared in constant time).
pub fn is_operator_token(state: &AppState, presented: &str) -> bool {
    // Digests, so that the comparison's time does not even tell the token's length.
    state
        .config
        .operator_token
        .as_ref()
        .is_some_and(|expected| {
            let expected = sha2::Sha256::digest(expected.expose_secret().as_bytes());
            let presented = sha2::Sha256::digest(presented.as_bytes());
            bool::from(presented.as_slice().ct_eq(expected.as_slice()))
        })
}

/// The configured operator token, to bind operator sessions to: changing the token ends
/// every session opened with the old one. Empty when none is configured, which matches
/// no session (none can be opened without a token).
pub fn current_operator_token(state: &AppState) -> &str {
    state
        .config
        .operator_token
        .as_ref()
        .map_or("", |token| token.expose_secret())
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A request authenticated by a dashboard session. Anything but a read must also carry
/// the session's CSRF token in `X-CSRF-Token`, which a cross-site page cannot know.
async fn session_context(
    parts: &Parts,
    state: &AppState,
    token: &str,
) -> Result<TenantContext, ApiError> {
    let mut tx = state.db.system_tx("dashboard session").await?;
    let session = tenancy::sessions::find(&mut tx, token).await?;
    tx.commit().await?;
    let session = session.ok_or_else(|| {
        ApiError::unauthorized("session_expired", "the session has ended; sign in again")
    })?;
    let reads = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !reads {
        let presented = parts
            .headers
            .get("x-csrf-token")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !bool::from(presented.ct_eq(session.csrf_token.as_bytes())) {
            return Err(ApiError::forbidden(
                "csrf_failed",
                "this request must carry the session's X-CSRF-Token",
            ));
        }
    }
    tracing::Span::current().record(
        "tenant_id",
        tracing::field::display(session.owner.tenant_id),
    );
    Ok(TenantContext {
        tenant_id: session.owner.tenant_id,
        key_id: session.owner.key_id,
        state: session.owner.tenant_state,
        via_session: true,
    })
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The operator view's browser session: reads only.
        if parts.headers.get(AUTHORIZATION).is_none()
            && let Some(token) = cookie(parts, OPERATOR_SESSION_COOKIE)
        {
            if !matches!(
                parts.method,
                axum::http::Method::GET | axum::http::Method::HEAD
            ) {
                return Err(ApiError::forbidden(
                    "read_only_session",
                    "the operator view's session can only read; use the operator token",
                ));
            }
            let mut tx = state.db.system_tx("operator session").await?;
            let valid = tenancy::sessions::operator_session_valid(
                &mut tx,
                token,
                current_operator_token(state),
            )
            .await?;
            tx.commit().await?;
            return if valid {
                Ok(Operator)
            } else {
                Err(ApiError::unauthorized(
                    "session_expired",
                    "the session has ended; sign in again",
                ))
            };
        }
        let presented = bearer_token(parts)?;
        // An address that keeps guessing is refused before its guess is compared, so
        // that even a right guess answers 429 until its minute is over.
        let address = crate::client_address::client_address(parts, state);
        let failures = crate::client_limits::ClientLimit::OperatorTokenFailures;
        if let Some(client) = address
            && let Some(wait) = crate::client_limits::refused_for(state, failures, client).await?
        {
            return Err(crate::limits::rate_limited_for(
                wait,
                "too many invalid operator tokens from this address; retry later",
            ));
        }
        if is_operator_token(state, presented) {
            return Ok(Operator);
        }
        // A valid tenant key is a known caller who is simply not allowed here.
        if key_owner(state, presented).await?.is_some() {
            return Err(ApiError::forbidden(
                "operator_only",
                "this endpoint is for operators; tenant API keys cannot use it",
            ));
        }
        if let Some(client) = address {
            // Only failures count; the answer is 401 whether or not this one fits.
            crate::client_limits::admit(state, failures, client).await?;
        }
        tracing::info!("operator token refused");
        Err(ApiError::unauthorized(
            "invalid_operator_token",
            "the operator token is not valid",
        ))
    }
}
