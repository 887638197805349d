//! The jobs that carry a transition out after it is taken: a plan change now, one due at
//! the period's end, and an erasure. Each names its transition and its tenant, and runs
//! one at a time with the tenant's other jobs.

use jobs::JobKind;
use saas_core::{TenantId, TransitionId};
use serde::{Deserialize, Serialize};

/// Moves a tenant from `upgrading`/`downgrading` to its new plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanChangeJob {
    pub transition_id: TransitionId,
    pub tenant_id: TenantId,
}

impl JobKind for PlanChangeJob {
    const KIND: &'static str = "lifecycle.plan_change";

    fn concurrency_key(&self) -> Option<String> {
        jobs::tenant_key(self.tenant_id)
    }
}

/// Switches the plan of a downgrade taken for the period's end, when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyScheduledPlanJob {
    pub transition_id: TransitionId,
    pub tenant_id: TenantId,
}

impl JobKind for ApplyScheduledPlanJob {
    const KIND: &'static str = "lifecycle.apply_scheduled_plan";

    fn concurrency_key(&self) -> Option<String> {
        jobs::tenant_key(self.tenant_id)
    }
}

/// Bills what an erased tenant used and removes the rest (run by the privacy crate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErasureJob {
    pub transition_id: TransitionId,
    pub tenant_id: TenantId,
}

impl JobKind for ErasureJob {
    const KIND: &'static str = "lifecycle.erasure";

    fn concurrency_key(&self) -> Option<String> {
        jobs::tenant_key(self.tenant_id)
    }
}
