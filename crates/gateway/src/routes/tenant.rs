use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use saas_core::{Metric, TenantId, TenantState};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::usage::period_summary;
use crate::auth::TenantContext;
use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_tenant))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Quota {
    /// Hard cap for the period; null where overage is billed instead.
    limit: Option<u64>,
    used: u64,
    /// Left under the cap; null without one.
    remaining: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantView {
    id: TenantId,
    name: String,
    state: TenantState,
    plan: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    quotas: BTreeMap<Metric, Quota>,
}

/// The calling tenant: state, plan, current billing period and quotas.
#[utoipa::path(get, path = "/v1/tenant", tag = "tenant", security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<TenantView>> {
    let (terms, metrics) = period_summary(&state, tenant).await?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let record = tenancy::tenants::get(&mut tx, tenant.tenant_id).await?;
    tx.commit().await?;
    Ok(Json(TenantView {
        id: record.id,
        name: record.name,
        state: record.state,
        plan: terms.plan_code,
        period_start: terms.period.start,
        period_end: terms.period.end,
        quotas: metrics
            .into_iter()
            .map(|(metric, m)| {
                (
                    metric,
                    Quota {
                        limit: m.limit,
                        used: m.used,
                        remaining: m.remaining,
                    },
                )
            })
            .collect(),
    }))
}
