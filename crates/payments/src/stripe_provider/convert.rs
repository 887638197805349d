//! Between async-stripe's types and ours: invoices read back, ids, currencies,
//! idempotency keys, and errors sorted into what the caller can act on.

use stripe::StripeError;
use stripe::{IdempotencyKey, RequestStrategy};
use stripe_billing::{Invoice, InvoiceLineItem};
use stripe_types::{Currency, Expandable};

use crate::provider::{LineOrigin, PaymentError, ProviderInvoice, ProviderLine};

use super::{INVOICE_KEY, LINE_KEY};

/// Our view of a Stripe invoice and its lines; our own lines are known by their
/// metadata.
pub(super) fn provider_invoice(
    invoice: &Invoice,
    lines: &[InvoiceLineItem],
) -> Result<ProviderInvoice, PaymentError> {
    let lines = lines
        .iter()
        .map(|line| ProviderLine {
            amount: line.amount,
            description: line.description.clone().unwrap_or_default(),
            origin: match line.metadata.get(LINE_KEY) {
                Some(reference) => LineOrigin::Ours(reference.clone()),
                None => LineOrigin::Other,
            },
        })
        .collect();
    Ok(ProviderInvoice {
        id: invoice_id(invoice)?,
        reference: invoice
            .metadata
            .as_ref()
            .and_then(|m| m.get(INVOICE_KEY))
            .cloned(),
        customer: invoice.customer.as_ref().map(expandable_id),
        status: invoice
            .status
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "draft".into()),
        currency: invoice.currency.to_string(),
        total: invoice.total,
        attempt_count: invoice.attempt_count,
        auto_advance: invoice.auto_advance.unwrap_or(false),
        lines,
    })
}

pub(super) fn idempotent(key: &str) -> Result<RequestStrategy, PaymentError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|error| PaymentError::Unexpected(error.to_string()))
}

pub(super) fn expandable_id<T: stripe_types::Object>(expandable: &Expandable<T>) -> String
where
    T::Id: ToString,
{
    expandable.id().to_string()
}

pub(super) fn invoice_id(invoice: &Invoice) -> Result<String, PaymentError> {
    invoice
        .id
        .as_ref()
        .map(|id| id.to_string())
        .ok_or_else(|| PaymentError::Unexpected("an invoice without an id".into()))
}

pub(super) fn currency(code: &str) -> Result<Currency, PaymentError> {
    code.parse()
        .map_err(|_| PaymentError::Unexpected(format!("currency {code}")))
}

/// Sorts an async-stripe error into what the caller can act on.
pub(super) fn classify(error: StripeError) -> PaymentError {
    match error {
        StripeError::Stripe(api, status) => {
            let message = api.message.clone().unwrap_or_default();
            let code = api.code.as_ref().map(|code| code.to_string());
            if let Some(decline) = api.decline_code.clone().or_else(|| {
                code.clone()
                    .filter(|c| c == "card_declined" || c == "expired_card" || c == "incorrect_cvc")
            }) {
                return PaymentError::Declined {
                    code: decline,
                    message,
                };
            }
            match status {
                404 => PaymentError::NotFound(message),
                429 | 500..=599 => PaymentError::Unavailable(format!("{status}: {message}")),
                _ => PaymentError::Refused(format!("{status}: {message}")),
            }
        }
        StripeError::ClientError(message) => PaymentError::Unavailable(message),
        StripeError::Timeout => PaymentError::Unavailable("timeout".into()),
        other => PaymentError::Unexpected(other.to_string()),
    }
}
