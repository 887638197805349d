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
#[derive(Clone)]
pub struct CustomerDetails {
    pub reference: String,
    pub email: String,
    pub name: String,
}

/// One line of one of our invoices, to be carried by the provider's invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    /// Our stable id for the line (invoice id and position): makes its creation idempotent.
    pub reference: String,
    /// Minor units (quantity x unit price, already rounded by our rating); negative for
    /// a credit.
    pub amount: i64,
    /// What the line bills, readable on the customer's invoice.
    pub description: String,
}

/// One of our invoices as the provider is to carry it: exactly these lines, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceDraft {
    /// Our invoice id: stored in the provider invoice's metadata, found again by it.
    pub reference: String,
    pub currency: String,
    pub description: String,
    pub lines: Vec<ChargeLine>,
}

/// Where a line of the provider's invoice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOrigin {
    /// One of ours, by its reference.
    Ours(String),
    /// Anything else the provider put on it.
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
    pub currency: String,
    pub total: i64,
    pub attempt_count: u64,
    /// Whether the provider would collect it on its own schedule (never, for ours).
    pub auto_advance: bool,
    pub lines: Vec<ProviderLine>,
}

impl ProviderInvoice {
    /// Why this invoice does not carry exactly `draft` (our lines by reference and
    /// amount, nothing else, the same currency and total), if it does not.
    pub fn differs_from(&self, draft: &InvoiceDraft) -> Option<String> {
        if !self.currency.eq_ignore_ascii_case(&draft.currency) {
            return Some(format!(
                "currency {} instead of {}",
                self.currency, draft.currency
            ));
        }
        let mut theirs: Vec<(&str, i64)> = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            match &line.origin {
                LineOrigin::Ours(reference) => theirs.push((reference, line.amount)),
                LineOrigin::Other => {
                    return Some(format!("a line that is not ours: {}", line.description));
                }
            }
        }
        let mut ours: Vec<(&str, i64)> = draft
            .lines
            .iter()
            .map(|line| (line.reference.as_str(), line.amount))
            .collect();
        theirs.sort_unstable();
        ours.sort_unstable();
        if theirs != ours {
            return Some(format!("lines {theirs:?} instead of {ours:?}"));
        }
        let total: i64 = draft.lines.iter().map(|line| line.amount).sum();
        (self.total != total).then(|| format!("total {} instead of {total}", self.total))
    }
}

/// How a charge attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Paid,
    /// The card was refused; `code` is the decline code when the provider gives one,
    /// `retryable` whether trying again later may succeed.
    Declined {
        code: String,
        message: String,
        retryable: bool,
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

    /// Whether the customer has a default payment method to charge.
    async fn has_default_payment_method(&self, customer: &str) -> Result<bool, PaymentError>;

    /// The provider invoice for `draft`, composed on the first call only: created as a
    /// draft that takes none of the customer's pending items and that the provider never
    /// collects on its own, each line attached to it by id, then finalized. A retry
    /// (`Attempt::Retry`) finds what an earlier call made by our references and adds only
    /// what is missing. The answer is checked by the caller with
    /// [`ProviderInvoice::differs_from`] before anything is charged.
    async fn push_invoice(
        &self,
        customer: &str,
        draft: &InvoiceDraft,
        attempt: Attempt,
    ) -> Result<ProviderInvoice, PaymentError>;

    /// The customer's provider invoice made for our invoice `reference`, if any.
    async fn find_invoice(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<ProviderInvoice>, PaymentError>;

    async fn get_invoice(&self, id: &str) -> Result<ProviderInvoice, PaymentError>;

    /// Charges a finalized invoice to the customer's default payment method, once per
    /// `attempt_key`. Paying a paid invoice reports `Paid`; a voided one `Closed`.
    async fn charge_invoice(
        &self,
        id: &str,
        attempt_key: &str,
    ) -> Result<ChargeOutcome, PaymentError>;

    /// Voids an invoice that will never be paid (a signup whose first payment failed),
    /// so that nothing is left to collect. Voiding a void invoice succeeds.
    async fn void_invoice(&self, id: &str) -> Result<(), PaymentError>;

    /// Makes `payment_method` the customer's default from now on.
    async fn replace_default_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
    ) -> Result<String, PaymentError>;

    /// Deletes the customer (and with it their payment methods).
    /// Deleting one that is already gone succeeds.
    async fn delete_customer(&self, customer: &str) -> Result<(), PaymentError>;

    /// A cheap authenticated round trip, for readiness.
    async fn ping(&self) -> Result<(), PaymentError>;
}

// Email and name are personal data: kept out of logs and panics.
impl std::fmt::Debug for CustomerDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerDetails")
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}
