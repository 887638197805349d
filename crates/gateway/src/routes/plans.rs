use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tenancy::plans::{self, Plan};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_plans))
}

#[derive(Serialize, utoipa::ToSchema)]
struct PlanList {
    plans: Vec<Plan>,
}

/// The public plan catalogue: base fee, and per metric the included units, the hard
/// limit (null where overage is billed instead) and the overage price tiers.
#[utoipa::path(get, path = "/v1/plans", tag = "plans",
    responses((status = 200, body = PlanList), (status = 503, body = ErrorBody)))]
async fn list_plans(State(state): State<AppState>) -> ApiResult<Json<PlanList>> {
    let mut conn = state.db.pool().acquire().await?;
    let plans = plans::list(&mut conn).await?;
    Ok(Json(PlanList { plans }))
}
