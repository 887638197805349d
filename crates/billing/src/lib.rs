//! Billing.
//!
//! [`rating`] turns a period's usage and a plan's terms into invoice lines: pure code,
//! integer minor units, one rounding rule. Invoices, previews and reconciliation all go
//! through it, so they cannot disagree. Charging goes through the `payments` crate.

pub mod rating;

pub use rating::{InvoiceLine, LineKind, RatedInvoice, RatingError, rate};
