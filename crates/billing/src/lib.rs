//! Billing.
//!
//! [`rating`] turns a period's usage and a plan's terms into invoice lines: pure code,
//! integer minor units, one rounding rule. Invoices, previews and reconciliation all go
//! through it, so they cannot disagree. [`invoices`] runs the invoice runs (exactly
//! one invoice per tenant and period, from ClickHouse usage), serves invoices and
//! reconciles them with usage. [`collection`] pushes invoices to Stripe, charges them and
//! runs dunning; [`webhooks`] takes Stripe's events. Charging goes through the `payments`
//! crate.

pub mod collection;
pub mod invoices;
pub mod rating;
pub mod webhooks;

pub use rating::{InvoiceLine, LineKind, RatedInvoice, RatingError, rate};
