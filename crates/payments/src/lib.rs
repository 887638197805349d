//! The payment provider.
//!
//! [`provider`] is the trait the rest of the system charges through: idempotent
//! operations on customers, payment methods and subscriptions, with errors sorted into
//! what a caller can act on. [`stripe_provider`] implements it on Stripe.

pub mod provider;
pub mod stripe_provider;

pub use provider::{
    Attempt, ChargeLine, ChargeOutcome, CustomerDetails, LineOrigin, PaymentError, PaymentProvider,
    ProviderInvoice, ProviderLine, RecurringPlan, SubscriptionRef,
};
pub use stripe_provider::StripeProvider;
