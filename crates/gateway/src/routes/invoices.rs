use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use billing::invoices::{Invoice, Reconciliation, RunReport};
use billing::period_invoice::ComposeError;
use billing::rating::{InvoiceLine, RatingError};
use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_core::{Currency, Metric};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::usage::period_summary;
use crate::auth::{Operator, TenantContext};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upcoming_invoice))
        .routes(routes!(list_invoices))
        .routes(routes!(get_invoice))
        .routes(routes!(start_billing_run))
        .routes(routes!(reconciliation))
}

#[derive(Serialize, utoipa::ToSchema)]
struct InvoiceList {
    invoices: Vec<Invoice>,
}

/// The calling tenant's invoices, newest first, with their lines. Works while suspended.
#[utoipa::path(get, path = "/v1/invoices", tag = "invoices", security(("api_key" = [])),
    responses((status = 200, body = InvoiceList), (status = 401, body = ErrorBody)))]
async fn list_invoices(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<InvoiceList>> {
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let invoices = billing::invoices::list(&mut tx, tenant.tenant_id).await?;
    tx.commit().await?;
    Ok(Json(InvoiceList { invoices }))
}

/// One invoice of the calling tenant (404 for anyone else's).
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "invoices", security(("api_key" = [])),
    params(("id" = String, Path, description = "The invoice id")),
    responses((status = 200, body = Invoice), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_invoice(
    State(state): State<AppState>,
    tenant: TenantContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Invoice>> {
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("invoice"))?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let invoice = billing::invoices::get(&mut tx, tenant.tenant_id, id)
        .await
        .map_err(ApiError::from_store("invoice"))?;
    tx.commit().await?;
    Ok(Json(invoice))
}

/// Invoices every tenant whose billing period has ended (and whose grace time has
/// passed). Idempotent: a period is invoiced once, however often this runs.
#[utoipa::path(post, path = "/v1/admin/billing/runs", tag = "admin", security(("operator_token" = [])),
    responses((status = 200, body = RunReport), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_billing_run(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<Json<RunReport>> {
    let grace = std::time::Duration::from_millis(state.config.billing.close_grace_ms);
    let collection = state.collection();
    billing::invoices::run(
        &state.db,
        &state.clickhouse,
        state.clock.now(),
        grace,
        collection,
    )
    .await
    .map(Json)
    .map_err(run_error)
}

fn run_error(error: billing::invoices::RunError) -> ApiError {
    match error {
        billing::invoices::RunError::Store(store) => store.into(),
        billing::invoices::RunError::Usage(usage) => {
            ApiError::unavailable("usage_store_unavailable", usage)
        }
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct ReconciliationFilter {
    /// Only this tenant's invoices.
    tenant_id: Option<String>,
    /// Start after this invoice id: the `next_after` of the previous page.
    after: Option<String>,
    /// Invoices per page, 1 to 1000 (default 500).
    limit: Option<usize>,
}

/// Compares invoices' billed quantities with the period's usage in ClickHouse and lists
/// each difference (none is expected), a page at a time in invoice id order: follow
/// `next_after` until it is absent to check them all.
#[utoipa::path(get, path = "/v1/admin/billing/reconciliation", tag = "admin",
    security(("operator_token" = [])), params(ReconciliationFilter),
    responses((status = 200, body = Reconciliation), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reconciliation(
    State(state): State<AppState>,
    _operator: Operator,
    Query(filter): Query<ReconciliationFilter>,
) -> ApiResult<Json<Reconciliation>> {
    let tenant = filter
        .tenant_id
        .map(|id| id.parse::<TenantId>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_tenant_id", e.to_string()))?;
    let after = filter
        .after
        .map(|id| id.parse::<uuid::Uuid>())
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid_after", "after must be an invoice id"))?;
    let limit = filter.limit.unwrap_or(500);
    if !(1..=billing::invoices::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let page = billing::invoices::Page {
        tenant,
        after,
        limit,
    };
    billing::invoices::reconcile(&state.db, &state.clickhouse, page)
        .await
        .map(Json)
        .map_err(run_error)
}

#[derive(Serialize, utoipa::ToSchema)]
struct UpcomingInvoice {
    plan: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    currency: Currency,
    /// The next period's base fee (billed in advance), then per metric the included usage
    /// and each overage tier used, then the prorations of upgrades taken in the period.
    lines: Vec<InvoiceLine>,
    /// Minor units: the sum of the lines.
    total: i64,
}

/// What the invoice closing the current period comes to from the usage so far, composed
/// exactly as the invoice run will compose it.
#[utoipa::path(get, path = "/v1/invoices/upcoming", tag = "invoices", security(("api_key" = [])),
    responses((status = 200, body = UpcomingInvoice), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn upcoming_invoice(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<UpcomingInvoice>> {
    let (_, metrics) = period_summary(&state, tenant).await?;
    let usage: BTreeMap<Metric, u64> = metrics.iter().map(|(m, s)| (*m, s.used)).collect();
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let (period, composed) =
        billing::period_invoice::upcoming(&mut tx, tenant.tenant_id, state.clock.now(), &usage)
            .await
            .map_err(|error| match error {
                ComposeError::Store(store) => store.into(),
                // A plan that cannot price its own usage is our fault, not the tenant's.
                ComposeError::Rating(
                    RatingError::NoOveragePrice { .. } | RatingError::InvalidTiers { .. },
                ) => ApiError::internal(error),
                ComposeError::Rating(RatingError::AmountOverflow) => ApiError::unprocessable(
                    "amount_overflow",
                    "the invoice total does not fit in 64 bits",
                ),
            })?;
    tx.commit().await?;
    let (plan, invoice) = (composed.plan, composed.invoice);
    Ok(Json(UpcomingInvoice {
        plan: plan.code,
        period_start: period.start,
        period_end: period.end,
        currency: invoice.currency,
        lines: invoice.lines,
        total: invoice.total,
    }))
}
