//! The plan-change jobs: the work between `upgrading`/`downgrading` and `active`.
//!
//! A change that takes effect now moves the subscription at the payment provider
//! (prorating the base fee on upgrades), then switches the tenant's plan, and with it its
//! quotas, in one transaction that also ends the state. Until that commit the tenant
//! keeps serving under its old limits. A downgrade at the period's end ends the state at
//! once, records the plan to switch to, and leaves a job due at the period's end.
//!
//! Both jobs are idempotent: the provider calls find what an earlier attempt did, and the
//! closing updates are conditional on the state they expect.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use jobs::{Job, JobError, JobHandler, NewJob};
use payments::{Attempt, PaymentError, PaymentProvider, RecurringPlan};
use saas_core::{TenantId, TenantState, TransitionId};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::plans::Plan;
use tenancy::tenants::Tenant;
use tenancy::{Db, StoreError};

use crate::job_errors::{retry, sql_retry};
use crate::transitions::{self, PLAN_CHANGE_JOB, Transition};

pub const APPLY_SCHEDULED_PLAN_JOB: &str = "lifecycle.apply_scheduled_plan";

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    transition_id: TransitionId,
    tenant_id: TenantId,
}

/// Runs both plan-change jobs; register it twice, once per kind (see [`Self::jobs`]).
#[derive(Clone)]
pub struct PlanChangeWorkflow {
    db: Db,
    payments: Option<Arc<dyn PaymentProvider>>,
    kind: &'static str,
}

impl PlanChangeWorkflow {
    /// The handlers for a plan change now and for one due at the period's end.
    pub fn jobs(db: Db, payments: Option<Arc<dyn PaymentProvider>>) -> [PlanChangeWorkflow; 2] {
        [PLAN_CHANGE_JOB, APPLY_SCHEDULED_PLAN_JOB].map(|kind| PlanChangeWorkflow {
            db: db.clone(),
            payments: payments.clone(),
            kind,
        })
    }

    async fn load(
        &self,
        payload: &Payload,
    ) -> Result<(Transition, Tenant, Option<String>, Plan), JobError> {
        let mut tx = self.db.tenant_tx(payload.tenant_id).await.map_err(retry)?;
        let transition = transitions::get(&mut tx, payload.tenant_id, payload.transition_id)
            .await
            .map_err(|error| match error {
                StoreError::NotFound => JobError::Permanent("transition not found".into()),
                other => retry(other),
            })?;
        let tenant = tenancy::tenants::get(&mut tx, payload.tenant_id)
            .await
            .map_err(retry)?;
        let scheduled: Option<String> =
            sqlx::query_scalar("SELECT scheduled_plan_code FROM tenants WHERE id = $1")
                .bind(payload.tenant_id.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(sql_retry)?;
        let plan = tenancy::plans::get(&mut tx, &transition.to_plan)
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(sql_retry)?;
        Ok((transition, tenant, scheduled, plan))
    }

    /// Puts the tenant's subscription on `plan`; the subscription it ends up with.
    async fn move_subscription(
        &self,
        tenant: &Tenant,
        plan: &Plan,
        prorate: bool,
    ) -> Result<Option<String>, PaymentError> {
        let Some(payments) = self.payments.as_ref().filter(|_| !tenant.synthetic) else {
            // Billing is not configured, or the tenant is a readiness probe (never
            // billed): the change is ours alone.
            return Ok(tenant.stripe_subscription_id.clone());
        };
        let current = tenant.stripe_subscription_id.as_deref();
        if plan.base_fee == 0 {
            if let Some(subscription) = current {
                payments.cancel_subscription(subscription).await?;
            }
            return Ok(None);
        }
        let recurring = RecurringPlan {
            code: plan.code.clone(),
            currency: plan.currency.to_string(),
            base_fee: plan.base_fee,
        };
        if let Some(subscription) = current {
            let moved = payments
                .change_plan(subscription, &recurring, prorate)
                .await?;
            return Ok(Some(moved.id));
        }
        // From a free plan: a first subscription, paid with the card on file.
        let customer = tenant.stripe_customer_id.as_deref().ok_or_else(|| {
            PaymentError::Refused("the tenant has no customer at the payment provider".into())
        })?;
        // The new subscription's first invoice takes every pending item of the customer:
        // not while an invoice push has some pending.
        let lock = tenancy::payment_lock::acquire(&self.db, tenant.id)
            .await
            .map_err(|error| PaymentError::Unavailable(error.to_string()))?;
        // Always a look-up first: this customer has had subscriptions before (from its
        // signup, or one it left), and the idempotency key counts them, so a key of an
        // earlier subscription is never sent again (Stripe would replay its answer).
        let created = payments
            .ensure_subscription(customer, &recurring, Attempt::Retry)
            .await;
        drop(lock);
        Ok(Some(created?.id))
    }

    async fn change_now(
        &self,
        transition: &Transition,
        tenant: &Tenant,
        plan: &Plan,
    ) -> Result<(), JobError> {
        let prorate = transition.to == TenantState::Upgrading;
        match self.move_subscription(tenant, plan, prorate).await {
            Ok(subscription) => {
                let mut tx = self.db.tenant_tx(tenant.id).await.map_err(retry)?;
                // New plan, new quotas and the end of the state, all at one commit.
                let switched = sqlx::query(
                    "UPDATE tenants SET plan_code = $2, stripe_subscription_id = $3, \
                            state = 'active', version = version + 1, updated_at = now() \
                     WHERE id = $1 AND state IN ('upgrading', 'downgrading')",
                )
                .bind(tenant.id.as_uuid())
                .bind(&plan.code)
                .bind(&subscription)
                .execute(&mut *tx)
                .await
                .map_err(sql_retry)?
                .rows_affected();
                // Not mid-change any more: erased meanwhile (erasure may interrupt).
                complete(tx, switched == 1, transition, tenant, plan).await
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
        let mut tx = self.db.tenant_tx(tenant.id).await.map_err(retry)?;
        let moved = sqlx::query(
            "UPDATE tenants SET scheduled_plan_code = $2, scheduled_plan_at = $3, \
                    state = 'active', version = version + 1, updated_at = now() \
             WHERE id = $1 AND state = 'downgrading'",
        )
        .bind(tenant.id.as_uuid())
        .bind(&transition.to_plan)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?
        .rows_affected();
        if moved == 0 {
            return Ok(()); // done by an earlier attempt
        }
        set_status(&mut tx, transition.id, "scheduled", None).await?;
        let payload = serde_json::json!({ "transition_id": transition.id, "tenant_id": tenant.id });
        jobs::enqueue(
            &mut tx,
            NewJob::new(APPLY_SCHEDULED_PLAN_JOB, payload)
                .dedup_key(transition.id.to_string())
                .run_at(at)
                .max_attempts(50),
        )
        .await
        .map_err(retry)?;
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
        audit::record(&mut tx, &entry).await.map_err(retry)?;
        tx.commit().await.map_err(sql_retry)
    }

    /// The scheduled downgrade, due now: switch the plan unless something replaced it.
    async fn apply_scheduled(
        &self,
        transition: &Transition,
        tenant: &Tenant,
        scheduled: Option<&str>,
        plan: &Plan,
    ) -> Result<(), JobError> {
        if transition.state != "scheduled" || scheduled != Some(plan.code.as_str()) {
            return Ok(()); // replaced by a later change, or done
        }
        // Taken like any transition, so that nothing else can move the tenant (or its
        // subscription) while the provider call runs. A retry after a crash finds the
        // tenant `downgrading` already and goes on.
        if tenant.state != TenantState::Downgrading {
            let mut tx = self.db.tenant_tx(tenant.id).await.map_err(retry)?;
            let taken = sqlx::query(
                "UPDATE tenants SET state = 'downgrading', version = version + 1, updated_at = now() \
                 WHERE id = $1 AND version = $2 AND state = 'active' AND scheduled_plan_code = $3",
            )
            .bind(tenant.id.as_uuid())
            .bind(tenant.version)
            .bind(&plan.code)
            .execute(&mut *tx)
            .await
            .map_err(sql_retry)?
            .rows_affected();
            tx.commit().await.map_err(sql_retry)?;
            if taken == 0 {
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
        let subscription = match self.move_subscription(tenant, plan, false).await {
            Ok(subscription) => subscription,
            Err(error) if error.is_retryable() => return Err(JobError::Retry(error.to_string())),
            Err(error) => {
                return self
                    .abandon(tenant.id, transition, &error.to_string())
                    .await;
            }
        };
        let mut tx = self.db.tenant_tx(tenant.id).await.map_err(retry)?;
        let switched = sqlx::query(
            "UPDATE tenants SET plan_code = $2, stripe_subscription_id = $3, state = 'active', \
                    scheduled_plan_code = NULL, scheduled_plan_at = NULL, \
                    version = version + 1, updated_at = now() \
             WHERE id = $1 AND state = 'downgrading' AND scheduled_plan_code = $2",
        )
        .bind(tenant.id.as_uuid())
        .bind(&plan.code)
        .bind(&subscription)
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?
        .rows_affected();
        complete(tx, switched == 1, transition, tenant, plan).await
    }

    /// A plan change that cannot be carried out (refused, or out of attempts): the tenant
    /// returns to `active` on the plan it has, and the transition fails with `reason`.
    async fn abandon(
        &self,
        tenant: TenantId,
        transition: &Transition,
        reason: &str,
    ) -> Result<(), JobError> {
        let mut tx = self.db.tenant_tx(tenant).await.map_err(retry)?;
        let current = tenancy::tenants::get(&mut tx, tenant)
            .await
            .map_err(retry)?;
        sqlx::query(
            "UPDATE tenants SET state = 'active', scheduled_plan_code = NULL, scheduled_plan_at = NULL, \
                    version = version + 1, updated_at = now() \
             WHERE id = $1 AND state IN ('upgrading', 'downgrading')",
        )
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?;
        if matches!(transition.state.as_str(), "running" | "scheduled") {
            finish(
                &mut tx,
                transition,
                &current,
                "failed",
                Some(reason.to_owned()),
            )
            .await?;
        }
        tx.commit().await.map_err(sql_retry)
    }
}

#[async_trait]
impl JobHandler for PlanChangeWorkflow {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let payload: Payload = serde_json::from_value(job.payload.clone())
            .map_err(|error| JobError::Permanent(format!("bad payload: {error}")))?;
        let (transition, tenant, scheduled, plan) = self.load(&payload).await?;
        let result = self
            .attempt(&transition, &tenant, scheduled.as_deref(), &plan)
            .await;
        // Out of attempts (or refused for good): never leave the tenant mid-transition,
        // where it would refuse every later change.
        let last = job.attempts >= job.max_attempts;
        match &result {
            Err(JobError::Permanent(reason)) => {
                self.abandon(tenant.id, &transition, reason).await?
            }
            Err(JobError::Retry(reason)) if last => {
                self.abandon(tenant.id, &transition, reason).await?
            }
            _ => {}
        }
        result
    }
}

impl PlanChangeWorkflow {
    async fn attempt(
        &self,
        transition: &Transition,
        tenant: &Tenant,
        scheduled: Option<&str>,
        plan: &Plan,
    ) -> Result<(), JobError> {
        if self.kind == APPLY_SCHEDULED_PLAN_JOB {
            return self
                .apply_scheduled(transition, tenant, scheduled, plan)
                .await;
        }
        if transition.state != "running" {
            return Ok(());
        }
        if transition.effective == "period_end" {
            self.schedule(transition, tenant).await
        } else {
            self.change_now(transition, tenant, plan).await
        }
    }
}

/// Commits a plan switch; when it took (`switched`), the transition completes with its
/// audit entry and win-back follow-up in the same commit.
async fn complete(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    switched: bool,
    transition: &Transition,
    tenant: &Tenant,
    plan: &Plan,
) -> Result<(), JobError> {
    if switched {
        finish(&mut tx, transition, tenant, "completed", None).await?;
        follow_up_winback(&mut tx, tenant.id, plan).await?;
    }
    tx.commit().await.map_err(sql_retry)
}

/// Leaving every paid plan is a cancellation, and starts a win-back campaign; taking a
/// paid plan again wins it back.
async fn follow_up_winback(
    conn: &mut PgConnection,
    tenant: TenantId,
    plan: &Plan,
) -> Result<(), JobError> {
    if plan.base_fee == 0 {
        crate::winback::start(conn, tenant, "cancelled")
            .await
            .map_err(retry)
    } else {
        crate::winback::end(conn, tenant, "won")
            .await
            .map_err(retry)
    }
}

async fn set_status(
    conn: &mut PgConnection,
    id: TransitionId,
    status: &str,
    failure: Option<String>,
) -> Result<(), JobError> {
    sqlx::query(
        "UPDATE tenant_transitions SET status = $2, failure_reason = $3, \
                completed_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END \
         WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(status)
    .bind(failure)
    .execute(conn)
    .await
    .map_err(sql_retry)?;
    Ok(())
}

/// Ends the transition as `status` with its audit entry.
async fn finish(
    conn: &mut PgConnection,
    transition: &Transition,
    tenant: &Tenant,
    status: &str,
    failure: Option<String>,
) -> Result<(), JobError> {
    set_status(conn, transition.id, status, failure.clone()).await?;
    let action = if status == "completed" {
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
    audit::record(conn, &entry).await.map_err(retry)?;
    metrics::counter!("tenant_plan_changes_total", "result" => status.to_owned()).increment(1);
    tracing::info!(tenant = %tenant.id, transition = %transition.id, status, "plan change ended");
    Ok(())
}
