use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use billing::rating::{self, InvoiceLine, RatingError};
use chrono::{DateTime, Utc};
use saas_core::{Currency, Metric};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::usage::period_summary;
use crate::auth::TenantContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upcoming_invoice))
}

#[derive(Serialize, utoipa::ToSchema)]
struct UpcomingInvoice {
    plan: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    currency: Currency,
    /// The base fee, then per metric the included usage and each overage tier used.
    lines: Vec<InvoiceLine>,
    /// Minor units: the sum of the lines.
    total: i64,
}

/// What the current period's invoice comes to from the usage so far, rated exactly as
/// the invoice run will rate it.
#[utoipa::path(get, path = "/v1/invoices/upcoming", tag = "invoices", security(("api_key" = [])),
    responses((status = 200, body = UpcomingInvoice), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn upcoming_invoice(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<UpcomingInvoice>> {
    let (terms, metrics) = period_summary(&state, tenant).await?;
    let mut conn = state.db.pool().acquire().await?;
    let plan = tenancy::plans::get(&mut conn, &terms.plan_code).await?;
    drop(conn);
    let usage: BTreeMap<Metric, u64> = metrics.iter().map(|(m, s)| (*m, s.used)).collect();
    let invoice = rating::rate(&plan, &usage).map_err(|error| match error {
        // A plan that cannot price its own usage is our fault, not the tenant's.
        RatingError::NoOveragePrice { .. } | RatingError::InvalidTiers { .. } => {
            ApiError::internal(error)
        }
        RatingError::AmountOverflow => ApiError::unprocessable(
            "amount_overflow",
            "the invoice total does not fit in 64 bits",
        ),
    })?;
    Ok(Json(UpcomingInvoice {
        plan: plan.code,
        period_start: terms.period.start,
        period_end: terms.period.end,
        currency: invoice.currency,
        lines: invoice.lines,
        total: invoice.total,
    }))
}
