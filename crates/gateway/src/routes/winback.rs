//! Win-back campaigns, as operators see them.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Operator;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_winback_campaigns))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct CampaignFilter {
    /// `running`, `won`, `ended` or `exhausted`.
    status: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CampaignList {
    campaigns: Vec<lifecycle::winback::CampaignView>,
}

/// Win-back campaigns and where each stands, newest first.
#[utoipa::path(get, path = "/v1/admin/winback/campaigns", tag = "admin",
    security(("operator_token" = [])), params(CampaignFilter),
    responses((status = 200, body = CampaignList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_winback_campaigns(
    State(state): State<AppState>,
    _operator: Operator,
    axum::extract::Query(filter): axum::extract::Query<CampaignFilter>,
) -> ApiResult<Json<CampaignList>> {
    if let Some(status) = &filter.status
        && !["running", "won", "ended", "exhausted"].contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            "unknown campaign status",
        ));
    }
    let mut tx = state.db.system_tx("operator win-back list").await?;
    let campaigns = lifecycle::winback::list(&mut tx, filter.status.as_deref(), 500).await?;
    tx.commit().await?;
    Ok(Json(CampaignList { campaigns }))
}
