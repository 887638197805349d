//! Billing.
//!
//! [`rating`] turns usage and a plan's terms into invoice lines: pure code, integer
//! minor units, one rounding rule. [`period_invoice`] composes what each invoice bills
//! (base fees in advance, usage in arrears, prorations of upgrades); invoices, previews
//! and reconciliation all go through it, so they cannot disagree. [`invoices`] runs the
//! invoice runs (exactly one invoice per tenant and period, from ClickHouse usage),
//! serves invoices and reconciles them with usage; [`final_invoice`] bills a tenant that
//! is being erased. [`collection`] composes each invoice at Stripe, charges it and runs
//! dunning, moving invoices only as [`invoice_status`] allows; [`webhooks`] takes Stripe's
//! events. Charging goes through the `payments` crate.

pub mod collection;
pub mod dunning_status;
pub mod final_invoice;
pub mod invoice_status;
pub mod invoices;
pub mod period_invoice;
pub mod rating;
pub mod webhooks;

pub use dunning_status::DunningStatus;
pub use invoice_status::InvoiceStatus;
pub use rating::{InvoiceLine, LineKind, RatedInvoice, RatingError, rate};
