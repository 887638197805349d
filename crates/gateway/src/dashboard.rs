//! The tenant dashboard: a page served by the service itself that reads the public API.
//!
//! Signing in exchanges an API key (posted in a form, never in a URL) for a session
//! cookie: HttpOnly, SameSite=Strict, and every request that changes something must also
//! carry the session's CSRF token, which only the page knows. The sign-in form itself is
//! protected by a double-submit token and by refusing cross-site posts. After that the
//! page calls the same `/v1/...` endpoints as any client, so what it shows is what the
//! API says.

use axum::Form;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth::{
    OPERATOR_SESSION_COOKIE, SESSION_COOKIE, TenantContext, cookie, current_operator_token,
    is_operator_token,
};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const LOGIN_CSRF_COOKIE: &str = "__Host-saas_login_csrf";
const LOGIN_PAGE: &str = include_str!("../assets/dashboard/login.html");
const DASHBOARD_PAGE: &str = include_str!("../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../assets/dashboard/app.css");
const OPERATOR_PAGE: &str = include_str!("../assets/dashboard/operator.html");
const OPERATOR_JS: &str = include_str!("../assets/dashboard/operator.js");
/// Only our own files, no inline script, never in a frame.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/session", get(session))
        .route(
            "/dashboard/assets/app.js",
            get(|| asset("text/javascript", APP_JS)),
        )
        .route(
            "/dashboard/assets/app.css",
            get(|| asset("text/css", APP_CSS)),
        )
        .route(
            "/dashboard/assets/operator.js",
            get(|| asset("text/javascript", OPERATOR_JS)),
        )
        .route("/dashboard/operator", get(operator_page))
        .route("/dashboard/operator/login", post(operator_login))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn set_cookie(response: &mut Response, name: &str, value: &str, max_age_secs: i64) {
    let cookie = format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age_secs.max(0)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// Which sign-in form: the tenant's (API key) or the operator's (operator token).
#[derive(Clone, Copy)]
enum SignIn {
    Tenant,
    Operator,
}

/// The sign-in page, with a fresh double-submit token in a cookie and in the form.
fn login_page(status: StatusCode, message: &str) -> Response {
    sign_in_page(SignIn::Tenant, status, message)
}

fn sign_in_page(kind: SignIn, status: StatusCode, message: &str) -> Response {
    let (title, action, label, hint) = match kind {
        SignIn::Tenant => (
            "Usage dashboard",
            "/dashboard/login",
            "API key",
            "Your key is exchanged for a session and is not kept by this page.",
        ),
        SignIn::Operator => (
            "Operator view",
            "/dashboard/operator/login",
            "Operator token",
            "The token is exchanged for a read-only session and is not kept by this page.",
        ),
    };
    let token = tenancy::tokens::random("");
    let body = LOGIN_PAGE
        .replace("{{title}}", title)
        .replace("{{action}}", action)
        .replace("{{label}}", label)
        .replace("{{hint}}", hint)
        .replace("{{csrf}}", &token)
        .replace("{{message}}", &escape(message));
    let mut response = html(status, body);
    set_cookie(&mut response, LOGIN_CSRF_COOKIE, &token, 3600);
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The dashboard for a signed-in browser, the sign-in page otherwise.
async fn page(State(state): State<AppState>, parts: Parts) -> Response {
    match cookie(&parts, SESSION_COOKIE) {
        Some(token) if session_exists(&state, token).await => {
            html(StatusCode::OK, DASHBOARD_PAGE.to_owned())
        }
        Some(_) => login_page(StatusCode::OK, "Your session has ended. Sign in again."),
        None => login_page(StatusCode::OK, ""),
    }
}

async fn session_exists(state: &AppState, token: &str) -> bool {
    let Ok(mut tx) = state.db.system_tx("dashboard page").await else {
        return false;
    };
    matches!(tenancy::sessions::find(&mut tx, token).await, Ok(Some(_)))
}

#[derive(Deserialize)]
struct LoginForm {
    api_key: String,
    csrf: String,
}

/// A post from another site (a form on someone else's page, aimed at a signed-in
/// browser) is refused, whatever it carries.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("same-origin");
    if fetch_site == "cross-site" || fetch_site == "same-site" {
        return true;
    }
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    match (origin, host) {
        // An opaque origin says nothing; the double-submit token still has to match.
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => {
            origin.split_once("://").map_or(origin, |(_, rest)| rest) != host
        }
        _ => false,
    }
}

/// False once this client has used up its sign-in attempts for the minute (on every
/// replica), or when the limit cannot be asked: a sign-in is refused rather than let
/// through unlimited.
async fn sign_in_allowed(state: &AppState, parts: &Parts) -> bool {
    let Some(client) = crate::client_address::client_address(parts, state) else {
        return true;
    };
    matches!(
        crate::client_limits::admit(state, crate::client_limits::ClientLimit::SignIns, client)
            .await,
        Ok(None)
    )
}

/// Whether a sign-in post came from our own form: same site, and its double-submit
/// token matches the cookie set with the form.
fn from_our_form(parts: &Parts, form: &LoginForm) -> bool {
    let expected = cookie(parts, LOGIN_CSRF_COOKIE).unwrap_or_default();
    let token_ok =
        !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes()));
    token_ok && !cross_site(&parts.headers)
}

async fn login(
    State(state): State<AppState>,
    parts: Parts,
    Form(form): Form<LoginForm>,
) -> Response {
    if !sign_in_allowed(&state, &parts).await {
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts from here. Wait a minute and try again.",
        );
    }
    if !from_our_form(&parts, &form) {
        return login_page(
            StatusCode::FORBIDDEN,
            "This sign-in did not come from this page. Reload it and try again.",
        );
    }
    let owner = {
        let Ok(mut tx) = state.db.system_tx("dashboard sign-in").await else {
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is unavailable.",
            );
        };
        tenancy::api_keys::authenticate(&mut tx, form.api_key.trim())
            .await
            .ok()
            .flatten()
    };
    let Some(owner) = owner.filter(|o| o.tenant_state != saas_core::TenantState::Deleted) else {
        tracing::info!("dashboard sign-in refused");
        return login_page(StatusCode::UNAUTHORIZED, "That API key is not valid.");
    };
    let ttl = chrono::TimeDelta::milliseconds(
        i64::try_from(state.config.dashboard.session_ttl_ms).unwrap_or(i64::MAX),
    );
    let created = async {
        let mut tx = state.db.tenant_tx(owner.tenant_id).await?;
        let session = tenancy::sessions::create(&mut tx, &owner, ttl).await?;
        tx.commit().await?;
        Ok::<_, tenancy::StoreError>(session)
    }
    .await;
    let Ok(session) = created else {
        return login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is unavailable.",
        );
    };
    tracing::info!(tenant = %owner.tenant_id, "dashboard session opened");
    let mut response = (StatusCode::SEE_OTHER, [(LOCATION, "/dashboard")]).into_response();
    set_cookie(
        &mut response,
        SESSION_COOKIE,
        &session.token,
        ttl.num_seconds(),
    );
    set_cookie(&mut response, LOGIN_CSRF_COOKIE, "", 0);
    response
}

/// Ends the session (a change: the page's CSRF token is required).
async fn logout(
    State(state): State<AppState>,
    _tenant: TenantContext,
    parts: Parts,
) -> ApiResult<Response> {
    if let Some(token) = cookie(&parts, SESSION_COOKIE) {
        let mut tx = state.db.system_tx("dashboard sign-out").await?;
        tenancy::sessions::delete(&mut tx, token).await?;
        tx.commit().await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, SESSION_COOKIE, "", 0);
    Ok(response)
}

#[derive(Serialize)]
struct SessionView {
    tenant_id: saas_core::TenantId,
    /// Send back in `X-CSRF-Token` with every request that changes something.
    csrf_token: String,
}

/// What the page needs to act for its session: the CSRF token.
async fn session(State(state): State<AppState>, parts: Parts) -> ApiResult<Json<SessionView>> {
    let token = cookie(&parts, SESSION_COOKIE)
        .ok_or_else(|| ApiError::unauthorized("session_expired", "sign in first"))?;
    let mut tx = state.db.system_tx("dashboard session").await?;
    let session = tenancy::sessions::find(&mut tx, token)
        .await?
        .ok_or_else(|| {
            ApiError::unauthorized("session_expired", "the session has ended; sign in again")
        })?;
    tx.commit().await?;
    Ok(Json(SessionView {
        tenant_id: session.owner.tenant_id,
        csrf_token: session.csrf_token,
    }))
}

/// The operator view for a signed-in operator browser, its sign-in page otherwise.
async fn operator_page(State(state): State<AppState>, parts: Parts) -> Response {
    let signed_in = match cookie(&parts, OPERATOR_SESSION_COOKIE) {
        Some(token) => match state.db.system_tx("operator page").await {
            Ok(mut tx) => matches!(
                tenancy::sessions::operator_session_valid(
                    &mut tx,
                    token,
                    current_operator_token(&state)
                )
                .await,
                Ok(true)
            ),
            Err(_) => false,
        },
        None => false,
    };
    if signed_in {
        html(StatusCode::OK, OPERATOR_PAGE.to_owned())
    } else {
        sign_in_page(SignIn::Operator, StatusCode::OK, "")
    }
}

/// Exchanges the operator token (posted in the form's `api_key` field) for a read-only
/// session.
async fn operator_login(
    State(state): State<AppState>,
    parts: Parts,
    Form(form): Form<LoginForm>,
) -> Response {
    let refuse = |status, message| sign_in_page(SignIn::Operator, status, message);
    if !sign_in_allowed(&state, &parts).await {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts from here. Wait a minute and try again.",
        );
    }
    if !from_our_form(&parts, &form) {
        return refuse(
            StatusCode::FORBIDDEN,
            "This sign-in did not come from this page. Reload it and try again.",
        );
    }
    if !is_operator_token(&state, form.api_key.trim()) {
        tracing::info!("operator sign-in refused");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "That operator token is not valid.",
        );
    }
    let ttl = chrono::TimeDelta::milliseconds(
        i64::try_from(state.config.dashboard.session_ttl_ms).unwrap_or(i64::MAX),
    );
    let created = async {
        let mut tx = state.db.system_tx("operator sign-in").await?;
        let token =
            tenancy::sessions::create_operator(&mut tx, ttl, current_operator_token(&state))
                .await?;
        tx.commit().await?;
        Ok::<_, tenancy::StoreError>(token)
    }
    .await;
    let Ok(token) = created else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is unavailable.",
        );
    };
    tracing::info!("operator session opened");
    let mut response = (StatusCode::SEE_OTHER, [(LOCATION, "/dashboard/operator")]).into_response();
    set_cookie(
        &mut response,
        OPERATOR_SESSION_COOKIE,
        &token,
        ttl.num_seconds(),
    );
    set_cookie(&mut response, LOGIN_CSRF_COOKIE, "", 0);
    response
}
