use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Operator;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(prometheus_metrics))
        .routes(routes!(readiness))
}

/// What a process without the API role serves: the probes a load balancer and an
/// orchestrator ask, and the metrics.
pub fn probes_router() -> axum::Router<AppState> {
    let (router, _) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(prometheus_metrics))
        .split_for_parts();
    router
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// How long `/readyz` waits for Postgres before calling this process unready.
const READYZ_DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Liveness for an orchestrator: the process is up and its HTTP server answers. Checks
/// no dependency, so an outage elsewhere never gets the process restarted.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, body = Health)))]
async fn livez() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness for a load balancer: this process can serve requests now. 200 while
/// Postgres answers and the process is not shutting down; 503 otherwise (`status`
/// `stopping` or `database_unreachable`). It checks nothing else: ingest and the API
/// need neither ClickHouse nor Stripe to answer, so their outages take no replica out of
/// rotation (see `/readiness` for the deep checks).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health),
              (status = 503, body = Health, description = "stopping, or Postgres unreachable")))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "stopping" }),
        );
    }
    let ping = async {
        let mut conn = state.db.pool().acquire().await?;
        sqlx::query("SELECT 1").execute(&mut *conn).await
    };
    match tokio::time::timeout(READYZ_DATABASE_WAIT, ping).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(Health { status: "ok" })),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "database_unreachable",
            }),
        ),
    }
}

/// Liveness: the process is up and serving HTTP. Checks no dependency (see /readiness).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn prometheus_metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.prometheus.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}

/// The four checks (metering, Stripe billing, onboarding, lifecycle), each exercising its
/// part for real with its own time limit: 200 when all pass, 503 otherwise. JSON, or with
/// `Accept: text/plain` a summary ending in `N/4 checks ready`. Concurrent callers share
/// one run.
///
/// With the operator token (or an operator session), a live run (reused for
/// `readiness.cache_ms`) and what each check saw. Without, the latest result, at most
/// `readiness.public_max_age_ms` old, without what the checks saw: anyone may ask, but
/// nobody without the token can make the checks run more often than that.
#[utoipa::path(get, path = "/readiness", tag = "operations",
    security((), ("operator_token" = [])),
    responses((status = 200, body = crate::readiness::Report),
              (status = 401, body = crate::error::ErrorBody),
              (status = 429, body = crate::error::ErrorBody),
              (status = 503, body = crate::readiness::Report, description = "not ready")))]
async fn readiness(State(state): State<AppState>, mut parts: Parts) -> Response {
    let credentials = parts.headers.contains_key(header::AUTHORIZATION)
        || crate::auth::cookie(&parts, crate::auth::OPERATOR_SESSION_COOKIE).is_some();
    let report = if credentials {
        if let Err(refused) = Operator::from_request_parts(&mut parts, &state).await {
            return refused.into_response();
        }
        let max_age = std::time::Duration::from_millis(state.config.readiness.cache_ms);
        state.readiness.report(&state, max_age).await
    } else {
        let max_age = std::time::Duration::from_millis(state.config.readiness.public_max_age_ms);
        state
            .readiness
            .report(&state, max_age)
            .await
            .without_internals()
    };
    let headers = &parts.headers;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| {
            accept.contains("text/plain") && !accept.contains("application/json")
        });
    if wants_text {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            report.as_text(),
        )
            .into_response()
    } else {
        (status, Json(report)).into_response()
    }
}
