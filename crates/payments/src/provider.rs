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

/// One line of one of our invoices, to be carried by the provider's invoice.
#[derive(Debug, Clone)]
pub struct ChargeLine {
    /// Our stable id for the line (invoice id and position): makes its creation idempotent.
    pub reference: String,
    /// Minor units (quantity x unit price, already rounded by our rating).
    pub amount: i64,
    /// Metric, quantity and unit price, readable on the customer's invoice.
    pub description: String,
    /// The subscription the line belongs with: Stripe puts an item on an invoice made for
    /// a subscription only when the item names it.
    pub subscription: Option<String>,
}

/// Where a line of the provider's invoice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOrigin {
    /// One of ours, by its reference.
    Ours(String),
    /// The subscription's recurring base fee.
    Subscription,
    /// Anything else the provider put on it (proration of a plan change, ...).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderLine {
    pub amount: i64,
    pub description: String,
    pub origin: LineOrigin,
}

/// The provider's invoice as far as we act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInvoice {
    pub id: String,
    /// Our invoice id, from the provider invoice's metadata (None: not one of ours).
    pub reference: Option<String>,
    pub customer: Option<String>,
    /// `draft`, `open`, `paid`, `uncollectible` or `void`.
    pub status: String,
    pub total: i64,
    pub attempt_count: u64,
    pub lines: Vec<ProviderLine>,
}

/// How a charge attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Paid,
    /// The card was refused; `code` is the decline code when the provider gives one.
    Declined {
        code: String,
        message: String,
    },
    /// The provider's invoice is closed without payment (`void`, `uncollectible`): there
    /// is nothing to charge.
    Closed {
        status: String,
    },
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

    /// A pending invoice item for `line`, created on the first call only (looked up by
    /// its reference on a retry).
    async fn ensure_invoice_item(
        &self,
        customer: &str,
        currency: &str,
        line: &ChargeLine,
        attempt: Attempt,
    ) -> Result<(), PaymentError>;

    /// The provider invoice for our invoice `reference`, created (as a draft that takes
    /// the customer's pending items, and the subscription's base fee where the provider
    /// bills it that way) on the first call only.
    async fn ensure_invoice(
        &self,
        customer: &str,
        subscription: Option<&str>,
        reference: &str,
        attempt: Attempt,
    ) -> Result<ProviderInvoice, PaymentError>;

    /// The customer's provider invoice made for our invoice `reference`, if any.
    async fn find_invoice(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<ProviderInvoice>, PaymentError>;

    async fn get_invoice(&self, id: &str) -> Result<ProviderInvoice, PaymentError>;

    /// Finalizes (where the provider supports it) and charges the invoice to the
    /// customer's default payment method. Paying a paid invoice reports `Paid`.
    async fn charge_invoice(
        &self,
        id: &str,
        attempt_key: &str,
    ) -> Result<ChargeOutcome, PaymentError>;

    /// Makes `payment_method` the customer's default from now on.
    async fn replace_default_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
    ) -> Result<String, PaymentError>;

    /// Deletes the customer (and with it their payment methods and subscriptions).
    /// Deleting one that is already gone succeeds.
    async fn delete_customer(&self, customer: &str) -> Result<(), PaymentError>;

    /// A cheap authenticated round trip, for readiness.
    async fn ping(&self) -> Result<(), PaymentError>;
}
