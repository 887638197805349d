//! The operator overview: what the operator view shows, as one JSON document.

use axum::Json;
use axum::extract::State;
use billing::invoices::{Revenue, UnpaidInvoice};
use lifecycle::transitions::RecentTransition;
use serde::Serialize;
use tenancy::tenants::StateCount;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Operator;
use crate::error::{ApiResult, ErrorBody};
use crate::readiness::Report;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(overview))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Overview {
    tenants_by_state: Vec<StateCount>,
    revenue_by_month: Vec<Revenue>,
    /// Invoices not paid (open or uncollectible), oldest first.
    unpaid_invoices: Vec<UnpaidInvoice>,
    recent_transitions: Vec<RecentTransition>,
    winback_campaigns: Vec<lifecycle::winback::CampaignView>,
    /// The latest /readiness result of this instance, if it ran.
    readiness: Option<Report>,
}

/// Tenants by state, revenue from paid invoices by month, unpaid invoices, recent
/// transitions, win-back campaigns and the latest readiness result. Readiness probes
/// are left out of every figure.
#[utoipa::path(get, path = "/v1/admin/overview", tag = "admin", security(("operator_token" = [])),
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn overview(State(state): State<AppState>, _operator: Operator) -> ApiResult<Json<Overview>> {
    let mut tx = state.db.system_tx("operator overview").await?;
    let tenants_by_state = tenancy::tenants::count_by_state(&mut tx).await?;
    let revenue_by_month = billing::invoices::revenue_by_month(&mut tx, 24).await?;
    let unpaid_invoices = billing::invoices::unpaid(&mut tx, 100).await?;
    let recent_transitions = lifecycle::transitions::recent(&mut tx, 20).await?;
    let winback_campaigns = lifecycle::winback::list(&mut tx, None, 20).await?;
    tx.commit().await?;
    Ok(Json(Overview {
        tenants_by_state,
        revenue_by_month,
        unpaid_invoices,
        recent_transitions,
        winback_campaigns,
        readiness: state.readiness.latest(&state).await,
    }))
}
