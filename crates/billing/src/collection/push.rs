//! Step 1 and 2 of collection: composing our invoice at Stripe and checking what Stripe
//! made of it before anything is charged.

use payments::{Attempt, ChargeLine, InvoiceDraft};
use saas_core::TenantId;
use uuid::Uuid;

use super::{CollectError, Collector};
use crate::invoices::payment::{self, LineRow};
use crate::rating::RatedInvoice;

/// The largest amount Stripe charges, in minor units of a two-decimal currency
/// ($999,999.99; https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
pub const MAX_CHARGE: i64 = 99_999_999;

impl Collector {
    /// The tenant's drafts, oldest first.
    pub(super) async fn drafts(&self, tenant: TenantId) -> Result<Vec<Uuid>, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let drafts = payment::drafts(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(drafts)
    }

    /// Step 1 and 2 of the module comment for one draft.
    pub(super) async fn push(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        customer: &str,
    ) -> Result<(), CollectError> {
        let (state, lines, attempt) = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let state = payment::state(&mut tx, tenant, invoice).await?;
            let lines = payment::lines(&mut tx, invoice).await?;
            // Recorded before the first call to Stripe: any later push of this invoice
            // (by whichever job) looks for what an earlier one may have made.
            let first = payment::start_push(&mut tx, tenant, invoice).await?;
            tx.commit().await?;
            let attempt = if first {
                Attempt::First
            } else {
                Attempt::Retry
            };
            (state, lines, attempt)
        };
        if state.status != "draft" {
            return Ok(());
        }
        let draft = stripe_draft(invoice, &state.currency, &lines);
        let total: i64 = draft.lines.iter().map(|line| line.amount).sum();
        if total > MAX_CHARGE {
            return Err(CollectError::TooLarge { invoice, total });
        }
        let at_stripe = self
            .payments
            .push_invoice(customer, &draft, attempt)
            .await?;
        let mismatch = |detail: String| CollectError::Mismatch { invoice, detail };
        if let Some(difference) = at_stripe.differs_from(&draft) {
            return Err(mismatch(difference));
        }
        if !matches!(at_stripe.status.as_str(), "open" | "paid") {
            return Err(mismatch(format!(
                "{} at Stripe, not finalized",
                at_stripe.status
            )));
        }
        let mut tx = self.db.tenant_tx(tenant).await?;
        let moved = payment::mark_pushed(&mut tx, tenant, invoice, &at_stripe.id).await?;
        tx.commit().await?;
        metrics::counter!("invoices_pushed_total").increment(u64::from(moved));
        tracing::info!(%tenant, %invoice, stripe_invoice = %at_stripe.id,
            total = at_stripe.total, "invoice pushed to Stripe");
        Ok(())
    }

    /// An invoice whose collection can never succeed as it stands is flagged for an
    /// operator, once, instead of being retried: its `collection_error` shows why (in the
    /// operator overview), the stalled-collection sweep leaves it alone, and
    /// `invoice_collection_failures_total` counts it for alerting.
    pub(super) async fn flag_if_hopeless(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        error: &CollectError,
    ) -> Result<(), CollectError> {
        let reason = match error {
            CollectError::Mismatch { .. } => "mismatch",
            CollectError::TooLarge { .. } => "too_large",
            CollectError::NoCustomer => "no_customer",
            _ => return Ok(()),
        };
        let mut tx = self.db.tenant_tx(tenant).await?;
        let flagged =
            payment::flag_collection_error(&mut tx, tenant, invoice, &error.to_string()).await?;
        tx.commit().await?;
        if flagged {
            metrics::counter!("invoice_collection_failures_total", "reason" => reason).increment(1);
            tracing::error!(%tenant, %invoice, %error, "invoice cannot be collected: operator needed");
        }
        Ok(())
    }
}

/// Our invoice as Stripe is to carry it: every line with an amount (a line of zero
/// bills nothing, and Stripe would only show it), by our id for the line.
fn stripe_draft(invoice: Uuid, currency: &str, lines: &[LineRow]) -> InvoiceDraft {
    let lines = lines
        .iter()
        .filter(|line| line.amount != 0)
        .map(|line| ChargeLine {
            reference: line_reference(invoice, line.position),
            amount: line.amount,
            // Metric and unit price are in the rated description; the quantity too here.
            description: match &line.metric {
                Some(_) => format!("{}: quantity {}", line.description, line.quantity),
                None => line.description.clone(),
            },
        })
        .collect();
    InvoiceDraft {
        reference: invoice.to_string(),
        currency: currency.to_owned(),
        description: format!("Invoice {invoice}"),
        lines,
    }
}

/// The signup invoice `invoice` as Stripe is to carry it (its lines carry no usage).
pub fn signup_draft(invoice: Uuid, rated: &RatedInvoice) -> InvoiceDraft {
    let lines: Vec<LineRow> = rated
        .lines
        .iter()
        .enumerate()
        .map(|(position, line)| LineRow {
            position: i32::try_from(position).unwrap_or(i32::MAX),
            metric: None,
            quantity: line.quantity.to_string(),
            amount: line.amount,
            description: line.description.clone(),
        })
        .collect();
    stripe_draft(invoice, &rated.currency.to_string(), &lines)
}

fn line_reference(invoice: Uuid, position: i32) -> String {
    format!("{invoice}:{position}")
}
