//! Billing.
//!
//! [`rating`] turns a period's usage and a plan's terms into invoice lines: pure code,
//! integer minor units, one rounding rule. Invoices, previews and reconciliation all go
//! through it, so they cannot disagree.
//!
//! [`payments`] is the payment provider trait (idempotent operations on customers,
//! payment methods and subscriptions); [`stripe_provider`] implements it on Stripe.

pub mod payments;
pub mod rating;
pub mod stripe_provider;

pub use rating::{InvoiceLine, LineKind, RatedInvoice, RatingError, rate};
