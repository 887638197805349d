//! The operator overview: what the operator view shows, as one JSON document.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Operator;
use crate::error::{ApiResult, ErrorBody};
use crate::readiness::Report;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(overview))
}

#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
struct StateCount {
    state: String,
    tenants: i64,
}

#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
struct Revenue {
    /// `YYYY-MM` of the invoiced periods' start.
    month: String,
    currency: String,
    /// Paid invoices, minor units.
    paid: i64,
    invoices: i64,
}

#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
struct UnpaidInvoice {
    #[schema(value_type = String)]
    id: uuid::Uuid,
    #[schema(value_type = String)]
    tenant_id: uuid::Uuid,
    period_start: DateTime<Utc>,
    status: String,
    total: i64,
    currency: String,
    /// Charges tried so far.
    payment_attempts: i32,
    /// `none`, `retrying`, `exhausted` or `hard_decline`.
    dunning: String,
    next_attempt_at: Option<DateTime<Utc>>,
    /// Why collecting it can never succeed as it stands (an operator must act), if so.
    collection_error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
struct RecentTransition {
    #[schema(value_type = String)]
    tenant_id: uuid::Uuid,
    kind: String,
    from_state: String,
    to_state: String,
    from_plan: String,
    to_plan: String,
    status: String,
    actor: String,
    created_at: DateTime<Utc>,
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
    let tenants_by_state = sqlx::query_as(
        "SELECT state, count(*) AS tenants FROM tenants WHERE NOT synthetic GROUP BY state ORDER BY state",
    )
    .fetch_all(&mut *tx)
    .await?;
    let revenue_by_month = sqlx::query_as(
        "SELECT to_char(date_trunc('month', i.period_start), 'YYYY-MM') AS month, i.currency, \
                sum(i.total)::bigint AS paid, count(*) AS invoices \
         FROM invoices i JOIN tenants t ON t.id = i.tenant_id \
         WHERE i.status = 'paid' AND NOT t.synthetic \
         GROUP BY 1, 2 ORDER BY 1 DESC, 2 LIMIT 24",
    )
    .fetch_all(&mut *tx)
    .await?;
    let unpaid_invoices = sqlx::query_as(
        "SELECT i.id, i.tenant_id, i.period_start, i.status, i.total, i.currency, \
                i.payment_attempts, i.dunning, i.next_attempt_at, i.collection_error \
         FROM invoices i JOIN tenants t ON t.id = i.tenant_id \
         WHERE i.status IN ('draft', 'open', 'uncollectible') AND NOT t.synthetic \
         ORDER BY i.period_start LIMIT 100",
    )
    .fetch_all(&mut *tx)
    .await?;
    let recent_transitions = sqlx::query_as(
        "SELECT r.tenant_id, r.kind, r.from_state, r.to_state, r.from_plan, r.to_plan, r.status, \
                r.actor, r.created_at \
         FROM tenant_transitions r JOIN tenants t ON t.id = r.tenant_id \
         WHERE NOT t.synthetic ORDER BY r.created_at DESC LIMIT 20",
    )
    .fetch_all(&mut *tx)
    .await?;
    let winback_campaigns = lifecycle::winback::list(&mut tx, None, 20).await?;
    tx.commit().await?;
    Ok(Json(Overview {
        tenants_by_state,
        revenue_by_month,
        unpaid_invoices,
        recent_transitions,
        winback_campaigns,
        readiness: state.readiness.latest().await,
    }))
}
