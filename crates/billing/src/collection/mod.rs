//! Collecting invoices through the payment provider, and dunning when a charge fails.
//!
//! Our invoice is the authority and Stripe the payment rail. The invoice run leaves each
//! invoice of a tenant with a Stripe customer as a `draft` and queues a collection job
//! for it. The job pushes the tenant's drafts to Stripe, oldest first, and charges them:
//!
//! 1. the Stripe invoice is composed from our lines and nothing else (see
//!    `payments::PaymentProvider::push_invoice`): a draft that takes no pending items
//!    and that Stripe never advances on its own, each line with an amount attached to it
//!    by id, then finalized. Invoice and lines carry our ids in their metadata and are
//!    looked up by them before a retry creates anything, so a job killed anywhere and run
//!    again makes no twin;
//! 2. the finalized Stripe invoice is checked against ours: the same lines (by our id
//!    and amount), currency and total, or it is never charged;
//! 3. the invoice is charged to the default payment method.
//!
//! A declined charge starts dunning: retries at the configured offsets from the first
//! failure, each a job of its own keyed by the attempt number, so it runs once. A hard
//! decline (a lost or stolen card, ...) is not retried. When dunning ends unpaid the
//! tenant is suspended through the lifecycle, free to reactivate itself by paying; a
//! payment at any point marks the invoice paid and lifts a suspension that dunning made.
//!
//! Only one collection, retry or settlement per tenant talks to Stripe at a time (the
//! tenant's payment lease, held without a transaction open): two pushes of one invoice at once would both find nothing and
//! both create it, and an invoice must not be charged twice at once.

mod charge;
mod dunning;
mod jobs;
mod push;
mod reactivation;

use std::sync::Arc;

use payments::{PaymentError, PaymentProvider};
use saas_core::TenantId;
use tenancy::{Db, StoreError};
use uuid::Uuid;

pub use crate::invoices::payment::{close, mark_paid};
pub use charge::Settlement;
pub use dunning::{DunningSchedule, NextStep};
pub use jobs::{
    CollectJob, RetryPaymentJob, enqueue_collection, enqueue_follow_up, requeue_stalled,
};
pub use push::{MAX_CHARGE, signup_draft};
pub use reactivation::{Reactivation, ReactivationError, reactivate};

use ::jobs::JobError;
use lifecycle::TransitionError;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// Stripe's invoice does not carry our usage lines exactly: never charged, for an
    /// operator to look at.
    #[error("invoice {invoice} differs at Stripe: {detail}")]
    Mismatch { invoice: Uuid, detail: String },
    #[error("the tenant has no Stripe customer")]
    NoCustomer,
    /// Above the largest amount Stripe charges: never sent, for an operator to settle.
    #[error("invoice {invoice} totals {total}, above the {MAX_CHARGE} Stripe can charge")]
    TooLarge { invoice: Uuid, total: i64 },
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

impl From<sqlx::Error> for CollectError {
    fn from(error: sqlx::Error) -> Self {
        CollectError::Store(error.into())
    }
}

impl From<CollectError> for JobError {
    fn from(error: CollectError) -> Self {
        match &error {
            CollectError::Payment(payment) if !payment.is_retryable() => {
                JobError::Permanent(error.to_string())
            }
            CollectError::Mismatch { .. }
            | CollectError::NoCustomer
            | CollectError::TooLarge { .. } => JobError::Permanent(error.to_string()),
            _ => JobError::Retry(error.to_string()),
        }
    }
}

/// Pushes, charges and dunns invoices. Cheap to clone.
#[derive(Clone)]
pub struct Collector {
    db: Db,
    payments: Arc<dyn PaymentProvider>,
    schedule: DunningSchedule,
}

impl Collector {
    pub fn new(db: Db, payments: Arc<dyn PaymentProvider>, schedule: DunningSchedule) -> Self {
        Self {
            db,
            payments,
            schedule,
        }
    }

    /// The tenant's payment lock (see `tenancy::payment_lock`): also keeps two
    /// collections, retries or settlements of one tenant from charging at once.
    pub(super) async fn lock(
        &self,
        tenant: TenantId,
    ) -> Result<tenancy::payment_lock::PaymentLease, CollectError> {
        Ok(tenancy::payment_lock::acquire(&self.db, tenant).await?)
    }

    /// Renews the lease, then does one step of work at Stripe (pushing an invoice,
    /// charging one), cut off at `STEP_LIMIT` so that it cannot outlive the lease. A step
    /// cut off is retried later like any failed call: every step is idempotent.
    pub(super) async fn step<T>(
        lease: &tenancy::payment_lock::PaymentLease,
        work: impl Future<Output = Result<T, CollectError>>,
    ) -> Result<T, CollectError> {
        lease.renew().await?;
        tokio::time::timeout(tenancy::payment_lock::STEP_LIMIT, work)
            .await
            .unwrap_or_else(|_| {
                Err(CollectError::Payment(PaymentError::Unavailable(
                    "a step at Stripe outlasted the payment lease's limit".into(),
                )))
            })
    }

    pub(super) async fn customer(&self, tenant: TenantId) -> Result<String, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let record = tenancy::tenants::get(&mut tx, tenant).await?;
        tx.commit().await?;
        record.stripe_customer_id.ok_or(CollectError::NoCustomer)
    }
}
