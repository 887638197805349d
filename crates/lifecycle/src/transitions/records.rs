//! Reading and finishing recorded transitions: one tenant's (API, export), the latest of
//! all (operator overview), and the facts others ask of them.

use chrono::{DateTime, Utc};
use saas_core::{TenantId, TransitionId};
use serde::Serialize;
use sqlx::PgConnection;
use tenancy::StoreError;
use uuid::Uuid;

use super::{Effective, Transition, TransitionKind, TransitionStatus};

/// The columns `TransitionRow` reads, as a literal so that queries stay static strings.
macro_rules! transition_columns {
    () => {
        "id, kind, from_state, to_state, from_plan, to_plan, status, effective, failure_reason, \
         created_at, completed_at"
    };
}

/// Whether the tenant's current suspension may be lifted by the tenant itself.
pub async fn tenant_may_reactivate(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<bool, StoreError> {
    let latest: Option<bool> = sqlx::query_scalar(
        "SELECT tenant_may_reactivate FROM tenant_transitions \
         WHERE tenant_id = $1 AND kind = 'suspension' ORDER BY created_at DESC LIMIT 1",
    )
    .bind(tenant.as_uuid())
    .fetch_optional(conn)
    .await?;
    Ok(latest.unwrap_or(false))
}

/// Who made the tenant's latest suspension (the actor as recorded), if it has one.
pub async fn last_suspended_by(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT actor FROM tenant_transitions WHERE tenant_id = $1 AND kind = 'suspension' \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(tenant.as_uuid())
    .fetch_optional(conn)
    .await?)
}

/// One transition of a tenant.
pub async fn get(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: TransitionId,
) -> Result<Transition, StoreError> {
    let row: TransitionRow = sqlx::query_as(concat!(
        "SELECT ",
        transition_columns!(),
        " FROM tenant_transitions WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// A tenant's transitions, newest first.
pub async fn list(
    conn: &mut PgConnection,
    tenant: TenantId,
    limit: i64,
) -> Result<Vec<Transition>, StoreError> {
    let rows: Vec<TransitionRow> = sqlx::query_as(concat!(
        "SELECT ",
        transition_columns!(),
        " FROM tenant_transitions WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(tenant.as_uuid())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

#[derive(sqlx::FromRow)]
struct TransitionRow {
    id: Uuid,
    kind: TransitionKind,
    from_state: String,
    to_state: String,
    from_plan: String,
    to_plan: String,
    status: TransitionStatus,
    effective: Effective,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl TryFrom<TransitionRow> for Transition {
    type Error = StoreError;

    fn try_from(row: TransitionRow) -> Result<Self, StoreError> {
        Ok(Transition {
            id: TransitionId::from_uuid(row.id),
            kind: row.kind,
            from: row.from_state.parse()?,
            to: row.to_state.parse()?,
            from_plan: row.from_plan,
            to_plan: row.to_plan,
            state: row.status,
            effective: row.effective,
            failure_reason: row.failure_reason,
            created_at: row.created_at,
            completed_at: row.completed_at,
        })
    }
}

/// The tenant's transitions for its data export, oldest first, without the answers kept
/// for idempotent retries.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'response' ORDER BY t.created_at), '[]') \
         FROM tenant_transitions t WHERE tenant_id = $1",
        tenant,
    )
    .await
}

/// Marks the transition completed.
pub async fn mark_completed(conn: &mut PgConnection, id: TransitionId) -> Result<(), StoreError> {
    set_status(conn, id, TransitionStatus::Completed, None).await
}

/// Moves the transition to `status`; a final one (completed, failed) is stamped with
/// its time.
pub async fn set_status(
    conn: &mut PgConnection,
    id: TransitionId,
    status: TransitionStatus,
    failure: Option<String>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tenant_transitions SET status = $2, failure_reason = $3, \
                completed_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END \
         WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(status)
    .bind(failure)
    .execute(conn)
    .await?;
    Ok(())
}

/// When a completed plan change took effect: `at` (a scheduled boundary), or else the
/// commit that completed it.
pub async fn set_effective_at(
    conn: &mut PgConnection,
    id: TransitionId,
    at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tenant_transitions SET effective_at = COALESCE($2, completed_at) WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The usage of the period up to a plan change, which billing rates under the old plan.
pub async fn record_usage_before(
    conn: &mut PgConnection,
    id: TransitionId,
    usage: &std::collections::BTreeMap<saas_core::Metric, u64>,
) -> Result<(), StoreError> {
    // Decimal strings: a u64 does not fit a JSON number exactly.
    let usage: serde_json::Map<String, serde_json::Value> = usage
        .iter()
        .map(|(metric, used)| (metric.as_str().to_owned(), used.to_string().into()))
        .collect();
    sqlx::query("UPDATE tenant_transitions SET usage_before = $2 WHERE id = $1")
        .bind(id.as_uuid())
        .bind(serde_json::Value::Object(usage))
        .execute(conn)
        .await?;
    Ok(())
}

// One recent transition, as the operator overview lists it.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct RecentTransition {
    #[schema(value_type = String)]
    pub tenant_id: Uuid,
    pub kind: String,
    pub from_state: String,
    pub to_state: String,
    pub from_plan: String,
    pub to_plan: String,
    pub status: String,
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// The latest transitions of all tenants, newest first, readiness probes left out.
pub async fn recent(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<RecentTransition>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.tenant_id, r.kind, r.from_state, r.to_state, r.from_plan, r.to_plan, r.status, \
                r.actor, r.created_at \
         FROM tenant_transitions r \
         WHERE NOT tenant_is_synthetic(r.tenant_id) ORDER BY r.created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
