//! Dunning: when a failed charge is tried again, and what it means for the tenant when
//! the retries run out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lifecycle::{Change, TransitionError, TransitionRequest};
use saas_core::{TenantId, TenantState};
use tenancy::audit::Actor;
use uuid::Uuid;

use super::{CollectError, Collector};
use crate::invoices::payment;

/// The actor dunning acts as in transitions and the audit log.
const DUNNING: Actor = Actor::System("dunning");

/// When failed charges are tried again: offsets from the first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DunningSchedule {
    pub retries: Vec<Duration>,
}

/// What dunning does after the `attempts`-th charge of an invoice failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Charge again at this time.
    RetryAt(DateTime<Utc>),
    /// Retries are used up: suspend the tenant.
    Exhausted,
    /// Not worth retrying: suspend the tenant now.
    HardDecline,
}

impl DunningSchedule {
    /// Pure: the step after charge number `attempts` (counted from 1) failed, worth
    /// retrying or not (as the payment provider judged the decline), dunning having
    /// started at `first_failed_at`.
    pub fn after_failure(
        &self,
        attempts: i32,
        retryable: bool,
        first_failed_at: DateTime<Utc>,
    ) -> NextStep {
        if !retryable {
            return NextStep::HardDecline;
        }
        let retries_made = usize::try_from(attempts - 1).unwrap_or(0);
        match self.retries.get(retries_made) {
            Some(offset) => NextStep::RetryAt(
                first_failed_at + chrono::TimeDelta::from_std(*offset).unwrap_or_default(),
            ),
            None => NextStep::Exhausted,
        }
    }
}

impl Collector {
    /// Carries dunning's verdict over to the tenant. When `invoice` ran out of retries
    /// (or met a hard decline), the tenant is suspended, free to come back by paying;
    /// once per invoice, so that an operator who lets the tenant back in without paying
    /// is not overruled. When nothing dunning gave up on is left unpaid, a suspension
    /// that dunning made is lifted.
    pub async fn uphold_dunning(
        &self,
        tenant: TenantId,
        invoice: Uuid,
    ) -> Result<(), CollectError> {
        let (state, gave_up_on_this, any_unpaid, suspended_by_dunning) = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let record = tenancy::tenants::get(&mut tx, tenant).await?;
            let (gave_up_on_this, any_unpaid) =
                payment::dunning_verdict(&mut tx, tenant, invoice).await?;
            let last_suspension_actor =
                lifecycle::transitions::last_suspended_by(&mut tx, tenant).await?;
            tx.commit().await?;
            (
                record.state,
                gave_up_on_this,
                any_unpaid,
                last_suspension_actor.as_deref() == Some(DUNNING.as_text().as_str()),
            )
        };
        let (change, reason) = match (state, &gave_up_on_this) {
            // Mid-transition: come back when it is over.
            (TenantState::Upgrading | TenantState::Downgrading, Some(_)) => {
                return Err(CollectError::Transition(TransitionError::InProgress));
            }
            (_, Some(why)) => (
                Change::Suspend {
                    tenant_may_reactivate: true,
                },
                format!("invoice {invoice} unpaid ({why})"),
            ),
            (TenantState::Suspended, None) if suspended_by_dunning && !any_unpaid => {
                (Change::Reactivate, "unpaid invoices settled".to_owned())
            }
            _ => return Ok(()),
        };
        let suspending = gave_up_on_this.is_some();
        if !(suspending && state != TenantState::Active) {
            let request = TransitionRequest {
                tenant_id: tenant,
                change,
                actor: DUNNING,
                reason: Some(reason),
                request_id: None,
                idempotency_key: None,
            };
            match lifecycle::transitions::begin(&self.db, &request).await {
                Ok(transition) => {
                    tracing::info!(%tenant, to = %transition.to, "dunning moved the tenant")
                }
                // Moved meanwhile by someone else (an operator, the tenant): theirs stands.
                Err(TransitionError::Invalid(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        if suspending {
            let mut tx = self.db.tenant_tx(tenant).await?;
            payment::mark_dunning_suspended(&mut tx, tenant, invoice).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> DunningSchedule {
        DunningSchedule {
            retries: vec![
                Duration::from_secs(3 * 86_400),
                Duration::from_secs(5 * 86_400),
                Duration::from_secs(7 * 86_400),
            ],
        }
    }

    #[test]
    fn soft_declines_are_retried_at_each_offset_then_dunning_is_exhausted() {
        let first = Utc::now();
        let days = |n| first + chrono::TimeDelta::days(n);
        assert_eq!(
            schedule().after_failure(1, true, first),
            NextStep::RetryAt(days(3))
        );
        assert_eq!(
            schedule().after_failure(2, true, first),
            NextStep::RetryAt(days(5))
        );
        assert_eq!(
            schedule().after_failure(3, true, first),
            NextStep::RetryAt(days(7))
        );
        assert_eq!(
            schedule().after_failure(4, true, first),
            NextStep::Exhausted
        );
    }

    #[test]
    fn declines_not_worth_retrying_end_dunning_at_once() {
        let first = Utc::now();
        assert_eq!(
            schedule().after_failure(1, false, first),
            NextStep::HardDecline
        );
    }

    #[test]
    fn no_retries_configured_means_the_first_failure_ends_dunning() {
        let empty = DunningSchedule { retries: vec![] };
        assert_eq!(
            empty.after_failure(1, true, Utc::now()),
            NextStep::Exhausted
        );
    }
}
