use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use metering::event::{RawBatch, validate_batch};
use metering::ledger::{self, IngestError};
use metering::quota;
use metering::usage_query::{self, Granularity, UsageReadError};
use saas_core::{Metric, TenantState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::TenantContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest_events))
        .routes(routes!(usage_series))
        .routes(routes!(usage_summary))
}

#[derive(Serialize, utoipa::ToSchema)]
struct IngestResponse {
    /// Events metered by this request.
    accepted: u64,
    /// Events whose id had been metered already (counted once, not again).
    duplicates: u64,
    /// The billing period the accepted events were metered in (and will be invoiced
    /// with), whatever their timestamps.
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
}

/// Metered calls are refused outside the states that serve them.
pub fn refuse_unless_serving(state: TenantState) -> Result<(), ApiError> {
    match state {
        state if state.serves_metered_calls() => Ok(()),
        TenantState::Suspended => Err(ApiError::forbidden(
            "tenant_suspended",
            "the tenant is suspended; usage is not metered until it is reactivated",
        )),
        TenantState::Deleted => Err(ApiError::forbidden(
            "tenant_deleted",
            "the tenant is deleted",
        )),
        _ => Err(ApiError::forbidden(
            "tenant_not_active",
            "the tenant is not active yet",
        )),
    }
}

fn remaining_header(metric: Metric) -> HeaderName {
    HeaderName::from_static(match metric {
        Metric::Queries => "x-quota-remaining-queries",
        Metric::Tokens => "x-quota-remaining-tokens",
        Metric::Bytes => "x-quota-remaining-bytes",
    })
}

/// Meters a batch of usage events (up to 1,000, all or nothing). Durable in the ledger
/// before the 202. Retries with the same event ids are counted once. Quota headers
/// `x-quota-remaining-<metric>` tell what is left under each hard limit. A tenant's
/// batches are metered a few at a time (`http.ingest_batches_per_tenant`); one past
/// that gets 429 `rate_limited` with `Retry-After`, and nothing of it is metered.
#[utoipa::path(post, path = "/v1/usage/events", tag = "usage", security(("api_key" = [])),
    request_body = RawBatch,
    responses(
        (status = 202, body = IngestResponse),
        (status = 400, body = ErrorBody, description = "malformed body"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "tenant suspended or deleted"),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "an event breaks the rules"),
        (status = 429, body = ErrorBody, description = "quota_exceeded, event_limit_reached, or rate_limited (too many of the tenant's batches at once); see Retry-After"),
        (status = 503, body = ErrorBody)))]
async fn ingest_events(
    State(state): State<AppState>,
    tenant: TenantContext,
    ApiJson(batch): ApiJson<RawBatch>,
) -> ApiResult<Response> {
    refuse_unless_serving(tenant.state)?;
    let now = state.clock.now();
    let batch = validate_batch(batch, now)
        .map_err(|invalid| ApiError::unprocessable(invalid.code, invalid.message))?;
    let _slot = state.ingest_slots.take(tenant.tenant_id).inspect_err(|_| {
        metrics::counter!("ingest_batches_refused_total", "reason" => "tenant_concurrency")
            .increment(1);
    })?;
    let outcome = ledger::ingest(
        &state.db,
        tenant.tenant_id,
        &batch.events,
        batch.in_batch_duplicates,
        now,
    )
    .await
    .map_err(ingest_error)?;

    let mut headers = HeaderMap::new();
    for (metric, status) in &outcome.usage {
        if let Some(remaining) = status.remaining {
            headers.insert(remaining_header(*metric), HeaderValue::from(remaining));
        }
    }
    let body = IngestResponse {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        period_start: outcome.period.start,
        period_end: outcome.period.end,
    };
    Ok((StatusCode::ACCEPTED, headers, Json(body)).into_response())
}

fn ingest_error(error: IngestError) -> ApiError {
    match error {
        IngestError::NotServing(state) => refuse_unless_serving(state).expect_err("not serving"),
        IngestError::QuotaExceeded {
            metric,
            limit,
            used,
            retry_after_secs,
            ..
        } => ApiError::too_many_requests(
            "quota_exceeded",
            format!(
                "the batch would take {metric} past this period's limit of {limit} \
                 ({used} used); nothing was metered"
            ),
            retry_after_secs,
        ),
        IngestError::EventLimit {
            metric,
            limit,
            retry_after_secs,
        } => ApiError::too_many_requests(
            "event_limit_reached",
            format!(
                "the batch would take {metric} past this period's {limit} events \
                 (the plan's event_limit); nothing was metered"
            ),
            retry_after_secs,
        ),
        IngestError::Overflow(metric) => ApiError::unprocessable(
            "usage_overflow",
            format!("the period's {metric} usage would exceed 2^64 - 1"),
        ),
        // Three periods closed under one batch: only a clock far off gets here.
        error @ IngestError::PeriodClosed(_) => ApiError::unavailable("period_closed", error),
        IngestError::Store(error) => error.into(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SeriesParams {
    /// `queries`, `tokens` or `bytes`.
    metric: Option<String>,
    /// RFC 3339, inclusive; defaults to the start of the current billing period.
    from: Option<String>,
    /// RFC 3339, exclusive; defaults to the end of the current bucket.
    to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    granularity: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Bucket {
    start: DateTime<Utc>,
    #[schema(value_type = u64)]
    value: u128,
}

#[derive(Serialize, utoipa::ToSchema)]
struct UsageSeries {
    metric: Metric,
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    series: Vec<Bucket>,
    #[schema(value_type = u64)]
    total: u128,
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::bad_request("invalid_parameter", format!("{name} must be RFC 3339")))
}

/// Usage over time, bucketed by minute, hour or day. Exact the moment events are
/// acknowledged.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("api_key" = [])),
    params(SeriesParams),
    responses((status = 200, body = UsageSeries), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn usage_series(
    State(state): State<AppState>,
    tenant: TenantContext,
    Query(params): Query<SeriesParams>,
) -> ApiResult<Json<UsageSeries>> {
    let metric: Metric = params
        .metric
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("invalid_parameter", "metric is required"))?
        .parse()
        .map_err(|e: saas_core::UnknownMetric| {
            ApiError::bad_request("invalid_parameter", e.to_string())
        })?;
    let granularity = match params.granularity.as_deref() {
        None | Some("hour") => Granularity::Hour,
        Some("minute") => Granularity::Minute,
        Some("day") => Granularity::Day,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "granularity must be minute, hour or day",
            ));
        }
    };
    let now = state.clock.now();
    let from = match params.from.as_deref() {
        Some(text) => parse_time("from", text)?,
        None => {
            let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
            let terms = ledger::tenant_terms(&mut tx, tenant.tenant_id, now).await?;
            tx.commit().await?;
            terms.period.start
        }
    };
    let to = match params.to.as_deref() {
        Some(text) => parse_time("to", text)?,
        None => granularity.floor(now) + granularity.step(),
    };
    let series = usage_query::series(
        &state.db,
        &state.clickhouse,
        tenant.tenant_id,
        metric,
        from,
        to,
        granularity,
    )
    .await
    .map_err(|error| match error {
        UsageReadError::RangeTooLarge | UsageReadError::EmptyRange => {
            ApiError::unprocessable("invalid_range", error.to_string())
        }
        UsageReadError::Store(error) => error.into(),
        UsageReadError::Sink(error) => ApiError::unavailable("usage_store_unavailable", error),
    })?;
    Ok(Json(UsageSeries {
        metric,
        granularity,
        from,
        to,
        series: series
            .buckets
            .into_iter()
            .map(|(start, value)| Bucket { start, value })
            .collect(),
        total: series.total,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MetricSummary {
    pub used: u64,
    pub included: u64,
    /// Hard cap for the period; null where overage is billed instead.
    pub limit: Option<u64>,
    /// Left under the hard cap; null without one.
    pub remaining: Option<u64>,
    /// Usage past the included units.
    pub overage: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct UsageSummary {
    plan: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    metrics: BTreeMap<Metric, MetricSummary>,
}

/// The current billing period's usage per metric against the plan's terms.
#[utoipa::path(get, path = "/v1/usage/summary", tag = "usage", security(("api_key" = [])),
    responses((status = 200, body = UsageSummary), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn usage_summary(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<UsageSummary>> {
    let (terms, metrics) = period_summary(&state, tenant).await?;
    Ok(Json(UsageSummary {
        plan: terms.plan_code,
        period_start: terms.period.start,
        period_end: terms.period.end,
        metrics,
    }))
}

/// The tenant's plan terms and current-period usage, shared by the summary and
/// `/v1/tenant`.
pub async fn period_summary(
    state: &AppState,
    tenant: TenantContext,
) -> ApiResult<(ledger::TenantTerms, BTreeMap<Metric, MetricSummary>)> {
    let now = state.clock.now();
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let terms = ledger::tenant_terms(&mut tx, tenant.tenant_id, now).await?;
    let used =
        metering::counters::period_usage(&mut tx, tenant.tenant_id, terms.period.start).await?;
    tx.commit().await?;
    let metrics = terms
        .metrics
        .iter()
        .map(|(metric, metric_terms)| {
            let used = used.get(metric).copied().unwrap_or(0);
            let summary = MetricSummary {
                used,
                included: metric_terms.included,
                limit: metric_terms.limit,
                remaining: quota::remaining(metric_terms, used),
                overage: quota::overage(metric_terms, used),
            };
            (*metric, summary)
        })
        .collect();
    Ok((terms, metrics))
}
