//! `lifecycle_state_machine`: the transition table holds, and of two concurrent
//! upgrades of the probe exactly one is taken.

use std::time::Duration;

use lifecycle::{Change, TransitionError, TransitionRequest};
use saas_core::{BillingCycle, TenantState};
use tenancy::audit::Actor;

use super::{CheckStatus, LIFECYCLE_PROBE, Outcome, ensure_probe};
use crate::state::AppState;

pub(super) async fn lifecycle_state_machine(state: &AppState) -> Outcome {
    lifecycle::state_machine::check_table()
        .map_err(|problem| format!("transition table: {problem}"))?;
    ensure_probe(
        state,
        LIFECYCLE_PROBE,
        "readiness probe (lifecycle)",
        "starter",
        BillingCycle::Months(1),
    )
    .await?;
    // Back on the starting plan if an earlier run stopped half-way.
    let current = wait_settled(state).await?;
    if current != "starter" {
        change_plan(state, "starter")
            .await
            .map_err(|e| format!("reset: {e}"))?;
        wait_settled(state).await?;
    }
    let (first, second) = tokio::join!(change_plan(state, "pro"), change_plan(state, "pro"));
    let accepted = [&first, &second].iter().filter(|r| r.is_ok()).count();
    let rejected = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(TransitionError::InProgress)))
        .count();
    if (accepted, rejected) != (1, 1) {
        return Err(format!(
            "two concurrent upgrades: {accepted} accepted, {rejected} rejected as in progress ({first:?}, {second:?})"
        ));
    }
    let upgraded = wait_settled(state).await?;
    if upgraded != "pro" {
        return Err(format!("the upgrade ended on {upgraded}"));
    }
    change_plan(state, "starter")
        .await
        .map_err(|e| format!("reset: {e}"))?;
    wait_settled(state).await?;
    Ok((
        CheckStatus::Pass,
        "transition table consistent; of two concurrent upgrades one was taken, one refused".into(),
    ))
}

async fn change_plan(
    state: &AppState,
    plan: &str,
) -> Result<lifecycle::Transition, TransitionError> {
    lifecycle::transitions::begin(
        &state.db,
        &TransitionRequest {
            tenant_id: LIFECYCLE_PROBE,
            change: Change::Plan {
                plan: plan.into(),
                at_once: true,
            },
            actor: Actor::System("readiness"),
            reason: Some("readiness probe".into()),
            request_id: None,
            idempotency_key: None,
        },
    )
    .await
}

/// Waits until the lifecycle probe is `active` (its job done); returns its plan.
async fn wait_settled(state: &AppState) -> Result<String, String> {
    loop {
        let mut tx = state
            .db
            .tenant_tx(LIFECYCLE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        let tenant = tenancy::tenants::get(&mut tx, LIFECYCLE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        if tenant.state == TenantState::Active {
            return Ok(tenant.plan_code);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
