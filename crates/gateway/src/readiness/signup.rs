//! `self_service_onboarding`: a synthetic signup runs through the real workflow.

use std::time::{Duration, Instant};

use lifecycle::{Change, TransitionRequest};
use saas_core::{SignupId, TenantId};
use tenancy::audit::Actor;

use super::{CheckStatus, Outcome};
use crate::state::AppState;

pub(super) async fn self_service_onboarding(state: &AppState) -> Outcome {
    let started = Instant::now();
    let id = SignupId::new();
    let signup = onboarding::request::ValidSignup {
        email: format!("probe+{}@readiness.invalid", id.as_uuid().simple()),
        company: format!("Readiness probe {}", id.as_uuid().simple()),
        plan_code: "free".into(),
        payment_method: None,
        paid: false,
    };
    let application = onboarding::accept::Application {
        id,
        signup,
        scope: None,
        synthetic: true,
    };
    onboarding::accept::accept(&state.db, application)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let mut tx = state
            .db
            .system_tx("readiness signup read")
            .await
            .map_err(|e| e.to_string())?;
        let current = onboarding::store::get(&mut tx, id, false)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        match current.status {
            onboarding::store::SignupStatus::Completed => break,
            onboarding::store::SignupStatus::Failed => {
                return Err(format!(
                    "synthetic signup failed: {}",
                    current.failure_reason.unwrap_or_default()
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let took = started.elapsed();
    // Clean up: the probe's tenant is erased like any other (its Stripe customer too).
    let erase = TransitionRequest {
        tenant_id: TenantId::from_uuid(id.as_uuid()),
        change: Change::Erase,
        actor: Actor::System("readiness"),
        reason: Some("readiness probe cleanup".into()),
        request_id: None,
        idempotency_key: None,
    };
    lifecycle::transitions::begin(&state.db, &erase)
        .await
        .map_err(|e| format!("cleanup: {e}"))?;
    Ok((
        CheckStatus::Pass,
        format!(
            "synthetic signup completed in {:.2} s (limit 60 s)",
            took.as_secs_f64()
        ),
    ))
}
