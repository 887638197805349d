use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(prometheus_metrics))
        .routes(routes!(readiness))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
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

/// Runs the four checks live (metering, Stripe billing, onboarding, lifecycle), each for
/// real and with its own time limit: 200 when all pass, 503 otherwise. JSON, or with
/// `Accept: text/plain` a summary ending in `N/4 checks ready`. Concurrent callers share
/// one run, and a result is reused for `readiness.cache_ms`.
#[utoipa::path(get, path = "/readiness", tag = "operations",
    responses((status = 200, body = crate::readiness::Report),
              (status = 503, body = crate::readiness::Report, description = "not ready")))]
async fn readiness(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let max_age = std::time::Duration::from_millis(state.config.readiness.cache_ms);
    let report = state.readiness.report(&state, max_age).await;
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
