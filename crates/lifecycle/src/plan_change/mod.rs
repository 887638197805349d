//! The plan-change jobs: the work between `upgrading`/`downgrading` and `active`.
//!
//! A change that takes effect now switches the tenant's plan, and with it its quotas, in
//! one transaction that also ends the state; until that commit the tenant keeps serving
//! under its old limits. A downgrade at the period's end ends the state at once, records
//! the plan to switch to, and leaves a job due at the period's end.
//!
//! Nothing moves at the payment provider: billing reads when each change took effect
//! (`effective_at`) and bills the prorations of upgrades itself. Leaving a free plan for
//! a paid one needs a payment method on file, checked here, so that the first invoice of
//! the new plan has something to charge.
//!
//! Both jobs are idempotent: the closing updates are conditional on the state they expect.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use jobs::{JobContext, JobError, JobHandler, JobKind, JobOptions, Worker};
use payments::{PaymentError, PaymentProvider};
use saas_core::{TenantId, TenantState, TransitionId};
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::plans::Plan;
use tenancy::tenants::Tenant;
use tenancy::{Db, StoreError};

use crate::transition_jobs::{ApplyScheduledPlanJob, PlanChangeJob};
use crate::transitions::{self, Effective, Transition, TransitionStatus};

mod closing;

use closing::{allowed, complete, ending, finish};

/// Which of the two plan-change jobs runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The change as taken: now, or scheduled for the period's end.
    Begin,
    /// The scheduled switch, at the period's end.
    ApplyScheduled,
}

/// Runs both plan-change jobs ([`Self::register_with`]).
#[derive(Clone)]
pub struct PlanChangeWorkflow {
    db: Db,
    payments: Option<Arc<dyn PaymentProvider>>,
}

impl PlanChangeWorkflow {
    pub fn new(db: Db, payments: Option<Arc<dyn PaymentProvider>>) -> Self {
        Self { db, payments }
    }

    /// Runs a plan change now and one due at the period's end on `worker`.
    pub fn register_with(self, worker: Worker) -> Worker {
        worker
            .register::<PlanChangeJob>(self.clone())
            .register::<ApplyScheduledPlanJob>(self)
    }

    async fn load(
        &self,
        tenant_id: TenantId,
        transition_id: TransitionId,
    ) -> Result<(Transition, Tenant, Option<String>, Plan), JobError> {
        let mut tx = self.db.tenant_tx(tenant_id).await?;
        let transition = transitions::get(&mut tx, tenant_id, transition_id)
            .await
            .map_err(|error| match error {
                StoreError::NotFound => JobError::Permanent("transition not found".into()),
                other => other.into(),
            })?;
        let tenant = tenancy::tenants::get(&mut tx, tenant_id).await?;
        let scheduled = tenant.scheduled_plan.clone().map(|(plan, _)| plan);
        let plan = tenancy::plans::get(&mut tx, &transition.to_plan).await?;
        tx.commit().await?;
        Ok((transition, tenant, scheduled, plan))
    }

    /// Refuses to leave a free plan for a paid one without a payment method on file.
    async fn check_payment_method(&self, tenant: &Tenant, plan: &Plan) -> Result<(), PaymentError> {
        let Some(payments) = self.payments.as_ref().filter(|_| !tenant.synthetic) else {
            // Billing is not configured, or the tenant is a readiness probe (never
            // billed): the change is ours alone.
            return Ok(());
        };
        if plan.base_fee == 0 {
            return Ok(());
        }
        let current = {
            let mut conn = self
                .db
                .pool()
                .acquire()
                .await
                .map_err(|error| PaymentError::Unavailable(error.to_string()))?;
            tenancy::plans::get(&mut conn, &tenant.plan_code)
                .await
                .map_err(|error| PaymentError::Unavailable(error.to_string()))?
        };
        if current.base_fee > 0 {
            return Ok(()); // paying already
        }
        let customer = tenant.stripe_customer_id.as_deref().ok_or_else(|| {
            PaymentError::Refused("the tenant has no customer at the payment provider".into())
        })?;
        if payments.has_default_payment_method(customer).await? {
            Ok(())
        } else {
            Err(PaymentError::Refused(
                "no payment method on file for a paid plan".into(),
            ))
        }
    }

    async fn change_now(
        &self,
        transition: &Transition,
        tenant: &Tenant,
        plan: &Plan,
    ) -> Result<(), JobError> {
        match self.check_payment_method(tenant, plan).await {
            Ok(()) => {
                let mut tx = self.db.tenant_tx(tenant.id).await?;
                // The usage so far is rated under the old plan, the rest under the new:
                // recorded with the counters locked, so that no batch slips between.
                let now = Utc::now();
                let usage = metering::counters::lock_period_usage(
                    &mut tx,
                    tenant.id,
                    tenant.period_at(now).start,
                )
                .await?;
                transitions::record_usage_before(&mut tx, transition.id, &usage).await?;
                // New plan, new quotas and the end of the state, all at one commit.
                let step = ending(transition)?;
                let switched =
                    tenancy::tenants::switch_plan(&mut tx, tenant.id, &plan.code, step).await?;
                // Not mid-change any more: erased meanwhile (erasure may interrupt).
                complete(tx, switched, transition, tenant, plan, None).await
            }
            Err(error) if error.is_retryable() => Err(JobError::Retry(error.to_string())),
            // Refused or declined: back to active on the old plan, and say why.
            Err(error) => {
                self.abandon(tenant.id, transition, &error.to_string())
                    .await
            }
        }
    }

    /// A downgrade at the period's end: the state ends now, the plan switches later.
    async fn schedule(&self, transition: &Transition, tenant: &Tenant) -> Result<(), JobError> {
        let at = tenant.period_at(Utc::now()).end;
        let mut tx = self.db.tenant_tx(tenant.id).await?;
        let step = allowed(TenantState::Downgrading, TenantState::Active)?;
        let moved =
            tenancy::tenants::schedule_plan(&mut tx, tenant.id, &transition.to_plan, at, step)
                .await?;
        if !moved {
            return Ok(()); // done by an earlier attempt
        }
        transitions::set_status(&mut tx, transition.id, TransitionStatus::Scheduled, None).await?;
        let job = ApplyScheduledPlanJob {
            transition_id: transition.id,
            tenant_id: tenant.id,
        };
        let options = JobOptions::dedup_key(transition.id.to_string())
            .run_at(at)
            .max_attempts(50);
        job.enqueue(&mut tx, options).await?;
        let mut entry = AuditEntry::new(
            Some(tenant.id),
            Actor::System("lifecycle"),
            "tenant.plan_change_scheduled",
        );
        entry.from_state = Some(TenantState::Downgrading);
        entry.to_state = Some(TenantState::Active);
        entry.details = serde_json::json!({
            "transition_id": transition.id, "to_plan": transition.to_plan, "at": at,
        });
        audit::record(&mut tx, &entry).await?;
        Ok(tx.commit().await?)
    }

    /// The scheduled downgrade, due now: switch the plan unless something replaced it.
    async fn apply_scheduled(
        &self,
        transition: &Transition,
        tenant: &Tenant,
        scheduled: Option<&str>,
        plan: &Plan,
    ) -> Result<(), JobError> {
        if transition.state != TransitionStatus::Scheduled || scheduled != Some(plan.code.as_str())
        {
            return Ok(()); // replaced by a later change, or done
        }
        // Taken like any transition, so that nothing else can move the tenant meanwhile.
        // A retry after a crash finds the tenant `downgrading` already and goes on.
        if tenant.state != TenantState::Downgrading {
            let mut tx = self.db.tenant_tx(tenant.id).await?;
            let step = allowed(TenantState::Active, TenantState::Downgrading)?;
            let taken = tenancy::tenants::take_for_scheduled_plan(
                &mut tx,
                tenant.id,
                tenant.version,
                &plan.code,
                step,
            )
            .await?;
            tx.commit().await?;
            if !taken {
                // Busy with another transition (try again later) or not active at all
                // (suspended or deleted tenants keep the plan they have).
                return match tenant.state {
                    TenantState::Upgrading | TenantState::Downgrading => {
                        Err(JobError::Retry("another transition is running".into()))
                    }
                    TenantState::Active => {
                        Err(JobError::Retry("the tenant moved meanwhile".into()))
                    }
                    _ => Ok(()),
                };
            }
        }
        let mut tx = self.db.tenant_tx(tenant.id).await?;
        // Effective at the boundary it was scheduled for, however late this job runs.
        let step = allowed(TenantState::Downgrading, TenantState::Active)?;
        let at =
            tenancy::tenants::apply_scheduled_plan(&mut tx, tenant.id, &plan.code, step).await?;
        complete(tx, at.is_some(), transition, tenant, plan, at).await
    }

    /// A plan change that cannot be carried out (refused, or out of attempts): the tenant
    /// returns to `active` on the plan it has, and the transition fails with `reason`.
    async fn abandon(
        &self,
        tenant: TenantId,
        transition: &Transition,
        reason: &str,
    ) -> Result<(), JobError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let current = tenancy::tenants::get(&mut tx, tenant).await?;
        if matches!(
            current.state,
            TenantState::Upgrading | TenantState::Downgrading
        ) {
            let step = allowed(current.state, TenantState::Active)?;
            tenancy::tenants::abandon_plan_change(&mut tx, tenant, step).await?;
        }
        if matches!(
            transition.state,
            TransitionStatus::Running | TransitionStatus::Scheduled
        ) {
            finish(
                &mut tx,
                transition,
                &current,
                TransitionStatus::Failed,
                Some(reason.to_owned()),
            )
            .await?;
        }
        Ok(tx.commit().await?)
    }
}

#[async_trait]
impl JobHandler<PlanChangeJob> for PlanChangeWorkflow {
    async fn run(&self, job: PlanChangeJob, context: JobContext) -> Result<(), JobError> {
        self.run_step(Step::Begin, job.tenant_id, job.transition_id, context)
            .await
    }
}

#[async_trait]
impl JobHandler<ApplyScheduledPlanJob> for PlanChangeWorkflow {
    async fn run(&self, job: ApplyScheduledPlanJob, context: JobContext) -> Result<(), JobError> {
        self.run_step(
            Step::ApplyScheduled,
            job.tenant_id,
            job.transition_id,
            context,
        )
        .await
    }
}

impl PlanChangeWorkflow {
    async fn run_step(
        &self,
        step: Step,
        tenant_id: TenantId,
        transition_id: TransitionId,
        context: JobContext,
    ) -> Result<(), JobError> {
        let (transition, tenant, scheduled, plan) = self.load(tenant_id, transition_id).await?;
        let result = self
            .attempt(step, &transition, &tenant, scheduled.as_deref(), &plan)
            .await;
        // Out of attempts (or refused for good): never leave the tenant mid-transition,
        // where it would refuse every later change.
        match &result {
            Err(JobError::Permanent(reason)) => {
                self.abandon(tenant.id, &transition, reason).await?
            }
            Err(JobError::Retry(reason)) if context.is_last_attempt() => {
                self.abandon(tenant.id, &transition, reason).await?
            }
            _ => {}
        }
        result
    }

    async fn attempt(
        &self,
        step: Step,
        transition: &Transition,
        tenant: &Tenant,
        scheduled: Option<&str>,
        plan: &Plan,
    ) -> Result<(), JobError> {
        if step == Step::ApplyScheduled {
            return self
                .apply_scheduled(transition, tenant, scheduled, plan)
                .await;
        }
        if transition.state != TransitionStatus::Running {
            return Ok(());
        }
        if transition.effective == Effective::PeriodEnd {
            self.schedule(transition, tenant).await
        } else {
            self.change_now(transition, tenant, plan).await
        }
    }
}
