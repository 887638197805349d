//! The jobs that carry a transition out after it is taken: a plan change now, one due at
//! the period's end, and an erasure. Each names its transition and its tenant, and runs
//! one at a time with the tenant's other jobs.

use jobs::JobKind;
use saas_core::{TenantId, TransitionId};
use serde::{Deserialize, Serialize};

/// A job kind whose payload is a transition of a tenant; only the stored name differs.
macro_rules! transition_job {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            pub transition_id: TransitionId,
            pub tenant_id: TenantId,
        }

        impl JobKind for $name {
            const KIND: &'static str = $kind;

            fn concurrency_key(&self) -> Option<String> {
                jobs::tenant_key(self.tenant_id)
            }
        }
    };
}

transition_job!(
    /// Moves a tenant from `upgrading`/`downgrading` to its new plan.
    PlanChangeJob,
    "lifecycle.plan_change"
);

transition_job!(
    /// Switches the plan of a downgrade taken for the period's end, when it ends.
    ApplyScheduledPlanJob,
    "lifecycle.apply_scheduled_plan"
);

transition_job!(
    /// Bills what an erased tenant used and removes the rest (run by the privacy crate).
    ErasureJob,
    "lifecycle.erasure"
);
