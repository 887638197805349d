//! How a plan change ends: the closing commit, its audit entry and win-back follow-up,
//! and the state moves the transition table allows it.

use chrono::Utc;
use jobs::JobError;
use saas_core::{StateMove, TenantId, TenantState, check_transition};
use sqlx::PgConnection;
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::plans::Plan;
use tenancy::tenants::Tenant;
use webhooks::EventData;
use webhooks::events::PlanChange;

use crate::transitions::{self, Transition, TransitionStatus};

/// Commits a plan switch; when it took (`switched`), the transition completes with its
/// audit entry and win-back follow-up in the same commit, in effect from `effective_at`
/// (a scheduled boundary) or from its completion.
pub(super) async fn complete(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    switched: bool,
    transition: &Transition,
    tenant: &Tenant,
    plan: &Plan,
    effective_at: Option<chrono::DateTime<Utc>>,
) -> Result<(), JobError> {
    if switched {
        finish(
            &mut tx,
            transition,
            tenant,
            TransitionStatus::Completed,
            None,
        )
        .await?;
        // A change taken at once is in effect from the commit that completes it.
        transitions::set_effective_at(&mut tx, transition.id, effective_at).await?;
        follow_up_winback(&mut tx, tenant.id, plan).await?;
    }
    Ok(tx.commit().await?)
}

/// Leaving every paid plan is a cancellation, and starts a win-back campaign; taking a
/// paid plan again wins it back.
async fn follow_up_winback(
    conn: &mut PgConnection,
    tenant: TenantId,
    plan: &Plan,
) -> Result<(), JobError> {
    if plan.base_fee == 0 {
        crate::winback::start(conn, tenant, "cancelled").await?;
    } else {
        crate::winback::end(conn, tenant, "won").await?;
    }
    Ok(())
}

/// Ends the transition as `status` with its audit entry.
pub(super) async fn finish(
    conn: &mut PgConnection,
    transition: &Transition,
    tenant: &Tenant,
    status: TransitionStatus,
    failure: Option<String>,
) -> Result<(), JobError> {
    transitions::set_status(conn, transition.id, status, failure.clone()).await?;
    let action = if status == TransitionStatus::Completed {
        "tenant.plan_changed"
    } else {
        "tenant.plan_change_failed"
    };
    let mut entry = AuditEntry::new(Some(tenant.id), Actor::System("lifecycle"), action);
    entry.from_state = Some(tenant.state);
    entry.to_state = Some(if tenant.state == TenantState::Deleted {
        TenantState::Deleted
    } else if matches!(
        tenant.state,
        TenantState::Upgrading | TenantState::Downgrading
    ) {
        TenantState::Active
    } else {
        tenant.state
    });
    entry.reason = failure;
    entry.details = serde_json::json!({
        "transition_id": transition.id,
        "from_plan": transition.from_plan,
        "to_plan": transition.to_plan,
    });
    audit::record(conn, &entry).await?;
    let change = PlanChange {
        transition_id: transition.id,
        from_plan: transition.from_plan.clone(),
        to_plan: transition.to_plan.clone(),
        reason: entry.reason.clone(),
    };
    let event = if status == TransitionStatus::Completed {
        EventData::PlanChangeCompleted(change)
    } else {
        EventData::PlanChangeFailed(change)
    };
    webhooks::emit(conn, tenant.id, event).await?;
    metrics::counter!("tenant_plan_changes_total", "result" => status.as_str()).increment(1);
    tracing::info!(tenant = %tenant.id, transition = %transition.id, status = status.as_str(), "plan change ended");
    Ok(())
}

/// The state change a plan-change job makes, from the transition table; a refusal is a
/// bug no retry mends.
pub(super) fn allowed(from: TenantState, to: TenantState) -> Result<StateMove, JobError> {
    check_transition(from, to).map_err(|refused| JobError::Permanent(refused.to_string()))
}

/// How the plan change `transition` ends: from the state it runs in back to active.
pub(super) fn ending(transition: &Transition) -> Result<StateMove, JobError> {
    allowed(transition.to, TenantState::Active)
}
