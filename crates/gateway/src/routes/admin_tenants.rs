use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use saas_core::{TenantId, TenantState};
use serde::{Deserialize, Serialize};
use tenancy::tenants::{self, Tenant, TenantQuery};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Operator;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants))
        .routes(routes!(get_tenant))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only tenants in this state.
    state: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AdminTenantView {
    id: TenantId,
    name: String,
    state: TenantState,
    plan: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl AdminTenantView {
    fn new(tenant: Tenant, now: DateTime<Utc>) -> Self {
        let period = tenant.period_at(now);
        Self {
            id: tenant.id,
            name: tenant.name,
            state: tenant.state,
            plan: tenant.plan_code,
            period_start: period.start,
            period_end: period.end,
            created_at: tenant.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct AdminTenantPage {
    tenants: Vec<AdminTenantView>,
    /// Pass as `after` to get the next page; null on the last page.
    next_after: Option<TenantId>,
}

/// Lists tenants, optionally by state, in pages. Readiness probe tenants are never listed.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", security(("operator_token" = [])),
    params(ListParams),
    responses((status = 200, body = AdminTenantPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    _operator: Operator,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<AdminTenantPage>> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let query = TenantQuery {
        state: params.state.map(|s| s.parse()).transpose().map_err(
            |e: saas_core::UnknownTenantState| {
                ApiError::bad_request("invalid_state", e.to_string())
            },
        )?,
        after: params.after.map(|s| s.parse()).transpose().map_err(
            |e: saas_core::IdParseError| ApiError::bad_request("invalid_cursor", e.to_string()),
        )?,
        limit,
        include_synthetic: false,
    };
    let mut tx = state.db.system_tx("operator tenant list").await?;
    let page = tenants::list(&mut tx, &query).await?;
    tx.commit().await?;
    let next_after = (page.len() == limit as usize)
        .then(|| page.last().map(|t| t.id))
        .flatten();
    Ok(Json(AdminTenantPage {
        tenants: page
            .into_iter()
            .map(|t| AdminTenantView::new(t, state.clock.now()))
            .collect(),
        next_after,
    }))
}

/// One tenant's detail.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}", tag = "admin", security(("operator_token" = [])),
    params(("id" = String, Path, description = "The tenant's id, `ten_...`")),
    responses((status = 200, body = AdminTenantView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    _operator: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<AdminTenantView>> {
    let id: TenantId = id.parse().map_err(|_| ApiError::not_found("tenant"))?;
    let mut tx = state.db.system_tx("operator tenant detail").await?;
    let tenant = tenants::get(&mut tx, id)
        .await
        .map_err(ApiError::from_store("tenant"))?;
    tx.commit().await?;
    if tenant.synthetic {
        return Err(ApiError::not_found("tenant"));
    }
    Ok(Json(AdminTenantView::new(tenant, state.clock.now())))
}
