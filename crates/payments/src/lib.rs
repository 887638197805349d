//! The payment provider.
//!
//! [`provider`] is the trait the rest of the system charges through: idempotent
//! operations on customers, payment methods and invoices that we compose ourselves, with
//! errors sorted into what a caller can act on. [`stripe_provider`] implements it on
//! Stripe; [`webhook_signature`] checks Stripe's webhook signatures and
//! [`webhook_event`] reads its events into our own type.

pub mod declines;
pub mod provider;
pub mod stripe_provider;
pub mod webhook_event;
pub mod webhook_signature;

pub use provider::{
    Attempt, ChargeLine, ChargeOutcome, CustomerDetails, InvoiceDraft, LineOrigin, PaymentError,
    PaymentProvider, ProviderInvoice, ProviderLine,
};
pub use stripe_provider::StripeProvider;
