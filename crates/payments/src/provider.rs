//! The payment provider: the one door to Stripe.
//!
//! Every operation is idempotent, because jobs retry and workers die mid-step. Two
//! layers make it so: a deterministic `Idempotency-Key` on each create (honoured by
//! Stripe), and a look-up before each create by an id we chose and stored in the object's
//! metadata, which also covers a retry that arrives after Stripe's key expiry, and
//! Stripe-compatible servers that ignore the header.

use async_trait::async_trait;

/// Who a customer is, from our side. `reference` is our stable id for the customer (a
/// signup id, a tenant id) and makes creation idempotent.
#[derive(Debug, Clone)]
pub struct CustomerDetails {
    pub reference: String,
    pub email: String,
    pub name: String,
}

/// A plan as the provider needs it: our code and the recurring base fee.
#[derive(Debug, Clone)]
pub struct RecurringPlan {
    pub code: String,
    pub currency: String,
    /// Minor units per billing period.
    pub base_fee: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRef {
    pub id: String,
    /// The provider's plan id the subscription is on.
    pub plan_id: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The card was refused; `code` is the provider's decline code.
    #[error("payment declined ({code}): {message}")]
    Declined { code: String, message: String },
    /// The provider refused the request itself (bad payment method id, ...).
    #[error("payment provider refused the request: {0}")]
    Refused(String),
    #[error("not found at the payment provider: {0}")]
    NotFound(String),
    /// Worth retrying later: network trouble, timeouts, 5xx.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected answer from the payment provider: {0}")]
    Unexpected(String),
}

impl PaymentError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, PaymentError::Unavailable(_))
    }
}

/// Whether an earlier, interrupted attempt of the same work may have created the object
/// already. Only then must an `ensure_*` call look for it first; on a first attempt it
/// skips that round trip. (Stripe's idempotency keys would also catch the twin, but only
/// for 24 hours and not on every Stripe-compatible server.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    First,
    Retry,
}

impl Attempt {
    /// From a job's run number, counted from 1.
    pub fn of_run(run: i32) -> Self {
        if run <= 1 {
            Attempt::First
        } else {
            Attempt::Retry
        }
    }
}

#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// The customer for `details.reference`, created on the first call only.
    async fn ensure_customer(
        &self,
        details: &CustomerDetails,
        attempt: Attempt,
    ) -> Result<String, PaymentError>;

    /// Attaches `payment_method` and makes it the customer's default, unless the customer
    /// has a default already.
    async fn ensure_default_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        attempt: Attempt,
    ) -> Result<String, PaymentError>;

    /// The customer's subscription to `plan`, created (and its first period charged to
    /// the default payment method) on the first call only.
    async fn ensure_subscription(
        &self,
        customer: &str,
        plan: &RecurringPlan,
        attempt: Attempt,
    ) -> Result<SubscriptionRef, PaymentError>;

    /// Moves a subscription to another plan; `prorate` credits the unused part of the old
    /// base fee and charges the new one for the rest of the period.
    async fn change_plan(
        &self,
        subscription: &str,
        plan: &RecurringPlan,
        prorate: bool,
    ) -> Result<SubscriptionRef, PaymentError>;

    /// Ends a subscription now, without a refund. Canceling one that has ended succeeds.
    async fn cancel_subscription(&self, subscription: &str) -> Result<(), PaymentError>;

    /// Deletes the customer (and with it their payment methods and subscriptions).
    /// Deleting one that is already gone succeeds.
    async fn delete_customer(&self, customer: &str) -> Result<(), PaymentError>;

    /// A cheap authenticated round trip, for readiness.
    async fn ping(&self) -> Result<(), PaymentError>;
}
