//! Step 3 of collection: charging, recording what each charge did, and the payments a
//! tenant makes itself to settle what it owes.

use ::jobs::{JobKind, JobOptions};
use chrono::{DateTime, Utc};
use payments::{ChargeOutcome, PaymentError};
use saas_core::TenantId;
use uuid::Uuid;

use super::dunning::NextStep;
use super::jobs::RetryPaymentJob;
use super::{CollectError, Collector};
use crate::DunningStatus;
use crate::invoices::payment::{self, InvoiceState, close, mark_paid};

/// How a settlement by the tenant ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Nothing is left unpaid.
    Settled { paid: usize },
    /// A charge was declined; nothing after it was tried.
    Declined { invoice: Uuid, code: String },
}

impl Collector {
    /// Pushes every draft of the tenant to Stripe, oldest first, then charges every
    /// pushed invoice not charged yet, then makes sure dunning's verdict on `invoice`
    /// stands. Another invoice that cannot be pushed is left for its own job (and
    /// logged); only `invoice`'s own failure fails this job.
    #[tracing::instrument(name = "collection", skip(self), fields(tenant = %tenant, invoice = %invoice))]
    pub async fn collect(&self, tenant: TenantId, invoice: Uuid) -> Result<(), CollectError> {
        let customer = self.customer(tenant).await?;
        let lock = self.lock(tenant).await?;
        let drafts = self.drafts(tenant).await?;
        for draft in drafts {
            let pushed = Self::step(&lock, self.push(tenant, draft, &customer)).await;
            match pushed {
                Ok(()) => {}
                Err(error) if draft == invoice => {
                    self.flag_if_hopeless(tenant, invoice, &error).await?;
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(%tenant, invoice = %draft, %error, "could not push another draft");
                }
            }
        }
        for state in self.uncharged(tenant).await? {
            Self::step(&lock, self.charge(tenant, &state, "collect")).await?;
        }
        lock.release().await?;
        self.uphold_dunning(tenant, invoice).await
    }

    /// The tenant's pushed invoices never charged, oldest first.
    pub(super) async fn uncharged(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<InvoiceState>, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let uncharged = payment::open_at_stripe(&mut tx, tenant, true).await?;
        tx.commit().await?;
        Ok(uncharged)
    }

    /// Charge number `attempt` of a dunning invoice; a no-op when it was made already.
    pub async fn retry_payment(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        attempt: i32,
    ) -> Result<(), CollectError> {
        let lock = self.lock(tenant).await?;
        let state = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let state = payment::state(&mut tx, tenant, invoice).await?;
            tx.commit().await?;
            state
        };
        if state.status == "open" && state.payment_attempts == attempt - 1 {
            Self::step(&lock, self.charge(tenant, &state, "retry")).await?;
        }
        lock.release().await?;
        self.uphold_dunning(tenant, invoice).await
    }

    /// Charges every open invoice of the tenant, oldest first, with its default payment
    /// method (a new card, typically): the payment a suspended tenant makes to come back.
    pub async fn settle(&self, tenant: TenantId) -> Result<Settlement, CollectError> {
        let lock = self.lock(tenant).await?;
        let open: Vec<InvoiceState> = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let rows = payment::open_at_stripe(&mut tx, tenant, false).await?;
            tx.commit().await?;
            rows
        };
        let mut paid = 0;
        for state in open {
            match Self::step(&lock, self.charge(tenant, &state, "settle")).await? {
                ChargeOutcome::Paid => paid += 1,
                ChargeOutcome::Closed { .. } => {}
                ChargeOutcome::Declined { code, .. } => {
                    lock.release().await?;
                    return Ok(Settlement::Declined {
                        invoice: state.id,
                        code,
                    });
                }
            }
        }
        lock.release().await?;
        Ok(Settlement::Settled { paid })
    }

    /// One charge of an open invoice; records the outcome and what dunning does next.
    pub(super) async fn charge(
        &self,
        tenant: TenantId,
        state: &InvoiceState,
        why: &str,
    ) -> Result<ChargeOutcome, CollectError> {
        let Some(stripe_id) = &state.stripe_invoice_id else {
            return Err(CollectError::Mismatch {
                invoice: state.id,
                detail: "open without a Stripe invoice".into(),
            });
        };
        let number = state.payment_attempts + 1;
        let key = format!("charge-{}-{number}-{why}", state.id);
        let outcome = match self.payments.charge_invoice(stripe_id, &key).await {
            Ok(outcome) => outcome,
            // Refused without a decline (no payment method, authentication needed, ...):
            // for dunning that is a failed charge like any other.
            Err(PaymentError::Refused(message)) => ChargeOutcome::Declined {
                code: "payment_refused".into(),
                message,
                retryable: true,
            },
            Err(other) => return Err(other.into()),
        };
        match &outcome {
            ChargeOutcome::Paid => {
                self.mark_paid(tenant, state.id, number).await?;
                metrics::counter!("invoice_charges_total", "outcome" => "paid").increment(1);
            }
            ChargeOutcome::Declined {
                code,
                message,
                retryable,
            } => {
                metrics::counter!("invoice_charges_total", "outcome" => "declined").increment(1);
                let first = state.first_failed_at.unwrap_or_else(Utc::now);
                let next = self.schedule.after_failure(number, *retryable, first);
                tracing::warn!(%tenant, invoice = %state.id, attempt = number, code, ?next,
                    "charge declined");
                self.record_failure(
                    tenant,
                    state.id,
                    number,
                    first,
                    &format!("{code}: {message}"),
                    &next,
                )
                .await?;
            }
            ChargeOutcome::Closed { status } => {
                // Voided or written off at Stripe: ours follows, and dunning ends.
                let mut tx = self.db.tenant_tx(tenant).await?;
                close(&mut tx, tenant, state.id, status).await?;
                tx.commit().await?;
            }
        }
        Ok(outcome)
    }

    pub(super) async fn record_failure(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        number: i32,
        first_failed_at: DateTime<Utc>,
        error: &str,
        next: &NextStep,
    ) -> Result<(), CollectError> {
        let (dunning, next_at) = match next {
            NextStep::RetryAt(at) => (DunningStatus::Retrying, Some(*at)),
            NextStep::Exhausted => (DunningStatus::Exhausted, None),
            NextStep::HardDecline => (DunningStatus::HardDecline, None),
        };
        let mut tx = self.db.tenant_tx(tenant).await?;
        let recorded = payment::record_failure(
            &mut tx,
            tenant,
            invoice,
            number,
            first_failed_at,
            error,
            dunning,
            next_at,
        )
        .await?;
        if recorded && let Some(at) = next_at {
            let job = RetryPaymentJob {
                tenant_id: tenant,
                invoice_id: invoice,
                attempt: number + 1,
            };
            let options = JobOptions::dedup_key(format!("{invoice}:{}", number + 1)).run_at(at);
            job.enqueue(&mut tx, options).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks the invoice paid (forward only: never out of `void` or `uncollectible`).
    pub(super) async fn mark_paid(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        attempts: i32,
    ) -> Result<(), CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        mark_paid(&mut tx, tenant, invoice, Some(attempts)).await?;
        tx.commit().await?;
        Ok(())
    }
}
