//! The mail a tenant gets at the moments that also make events: written to the outbox
//! with the event, in the same transaction, unless the tenant turned its kind off
//! (`/v1/tenant/notifications`). The outbox sends only to a confirmed address.

use db::StoreError;
use outbox::Kind;
use sqlx::PgConnection;

use crate::events::{Event, EventData};

/// Writes the mail that goes with `event`, if any.
pub(crate) async fn for_event(conn: &mut PgConnection, event: &Event) -> Result<(), StoreError> {
    let Some((kind, subject, body)) = compose(&event.data) else {
        return Ok(());
    };
    let tenant = tenancy::tenants::get(conn, event.tenant_id).await?;
    let Some(recipient) = tenant.email else {
        return Ok(());
    };
    outbox::enqueue(
        conn,
        &outbox::NewMessage {
            tenant: event.tenant_id,
            kind,
            recipient: &recipient,
            subject: &subject,
            body: &body,
            dedup_key: &format!("event:{}", event.id),
        },
    )
    .await?;
    Ok(())
}

/// Amounts in minor units, shown with two decimals and the currency's code.
fn amount(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!(
        "{sign}{}.{:02} {}",
        minor / 100,
        minor % 100,
        currency.to_uppercase()
    )
}

fn compose(data: &EventData) -> Option<(Kind, String, String)> {
    Some(match data {
        EventData::UsageThresholdReached(alert) => (
            Kind::QuotaAlert,
            format!(
                "You have used {}% of your {} quota",
                alert.threshold_percent, alert.metric
            ),
            format!(
                "Your {} usage reached {} of {} this period ({} to {}).\n",
                alert.metric,
                alert.used,
                alert.quota,
                alert.period_start.format("%Y-%m-%d"),
                alert.period_end.format("%Y-%m-%d"),
            ),
        ),
        EventData::InvoicePaymentFailed(failed) => (
            Kind::PaymentFailed,
            "A payment failed".to_owned(),
            format!(
                "The payment of {} for invoice {} failed{}.\n{}\n",
                amount(failed.amount_due, &failed.currency),
                failed.invoice_id,
                failed
                    .reason
                    .as_deref()
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default(),
                match failed.next_retry_at {
                    Some(at) => format!(
                        "It will be tried again on {}. Check your payment method before then.",
                        at.format("%Y-%m-%d %H:%M UTC")
                    ),
                    None => "It will not be tried again; please pay the invoice.".to_owned(),
                },
            ),
        ),
        EventData::TenantSuspended(change) => (
            Kind::Suspension,
            "Your account is suspended".to_owned(),
            format!(
                "Your account was suspended{}. Usage is not accepted until it is reactivated.\n",
                change
                    .reason
                    .as_deref()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default()
            ),
        ),
        EventData::TenantReactivated(_) => (
            Kind::Reactivation,
            "Your account is active again".to_owned(),
            "Your account was reactivated; everything works as before.\n".to_owned(),
        ),
        EventData::InvoiceCreated(invoice) => (
            Kind::InvoiceAvailable,
            "Your invoice is available".to_owned(),
            format!(
                "Invoice {} for {} to {}: {}. See GET /v1/invoices/{}.\n",
                invoice.invoice_id,
                invoice.period_start.format("%Y-%m-%d"),
                invoice.period_end.format("%Y-%m-%d"),
                amount(invoice.total, &invoice.currency),
                invoice.invoice_id,
            ),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_money() {
        assert_eq!(amount(123_456, "usd"), "1234.56 USD");
        assert_eq!(amount(5, "eur"), "0.05 EUR");
        assert_eq!(amount(-250, "usd"), "-2.50 USD");
    }
}
