//! Stripe's webhooks: what Stripe tells us happened to an invoice (paid in its
//! dashboard, voided, marked uncollectible).
//!
//! - The signature is checked on the raw body (`Stripe-Signature: t=...,v1=...`, an
//!   HMAC-SHA256 of `t.body`), with a tolerance on `t` against replays.
//! - Each event is acted on once: its id is stored in the transaction that acts on it.
//! - The payload is never trusted for state: the object is fetched from Stripe, which
//!   both confirms that it exists (an event about an unknown object changes nothing) and
//!   makes the arrival order irrelevant. Our invoice only ever moves forward
//!   (`draft`/`open` to `paid`, `void` or `uncollectible`), so a late event about an
//!   older state is a no-op.
//! - Types we do not act on are answered 2xx and ignored.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use payments::{PaymentError, PaymentProvider};
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tenancy::{Db, StoreError};
use uuid::Uuid;

/// Stripe's own default: events signed more than five minutes ago are refused.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing or malformed")]
    Malformed,
    #[error("no signature matches the body")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance")]
    Expired,
}

/// Checks `header` (the `Stripe-Signature` value) against the raw `body`. Any of several
/// `v1` signatures may match (Stripe sends one per active secret while one is rolled).
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp: Option<i64> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse().map_err(|_| SignatureError::Malformed)?),
            "v1" => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            _ => {} // v0 (test-mode legacy) and future schemes
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matches = signatures.iter().any(|signature| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(signature).is_ok()
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// The signature header Stripe would send for `body` at `timestamp` (for tests and tools).
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The parts of an event we read; everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: EventObject,
}

#[derive(Debug, Deserialize)]
pub struct EventObject {
    pub id: Option<String>,
    pub object: Option<String>,
}

/// What handling an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Seen before: nothing done again.
    Duplicate,
    /// A type we do not act on.
    Ignored,
    /// Stripe does not know the object: nothing done.
    UnknownObject,
    /// Not one of our invoices.
    NotOurs,
    /// Our invoice already stood there (or further).
    NoChange,
    /// Our invoice moved to Stripe's state.
    Applied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::UnknownObject => "unknown_object",
            Outcome::NotOurs => "not_ours",
            Outcome::NoChange => "no_change",
            Outcome::Applied => "applied",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
}

impl From<sqlx::Error> for WebhookError {
    fn from(error: sqlx::Error) -> Self {
        WebhookError::Store(error.into())
    }
}

/// An invoice we moved to paid, so that dunning's suspension can be lifted.
#[derive(Debug, Clone, Copy)]
pub struct Paid {
    pub tenant: TenantId,
    pub invoice: Uuid,
}

/// Acts on one verified event, once.
pub async fn handle(
    db: &Db,
    payments: &Arc<dyn PaymentProvider>,
    event: &Event,
) -> Result<(Outcome, Option<Paid>), WebhookError> {
    let is_invoice = event.kind.starts_with("invoice.")
        && event.data.object.object.as_deref() == Some("invoice");
    let confirmed = match (&event.data.object.id, is_invoice) {
        (Some(stripe_id), true) => confirm_invoice(db, payments, stripe_id).await?,
        _ => Confirmed::Nothing(Outcome::Ignored),
    };
    let mut tx = db.system_tx("stripe webhook").await?;
    // Acted on first, recorded in the same transaction: a twin delivered meanwhile
    // fails to record and rolls its action back.
    let (outcome, paid) = match confirmed {
        Confirmed::Nothing(outcome) => (outcome, None),
        Confirmed::Ours {
            tenant,
            invoice,
            status,
        } => {
            let moved = apply(&mut tx, tenant, invoice, &status).await?;
            let paid = (moved && status == "paid").then_some(Paid { tenant, invoice });
            let outcome = if moved {
                Outcome::Applied
            } else {
                Outcome::NoChange
            };
            (outcome, paid)
        }
    };
    let first = sqlx::query(
        "INSERT INTO stripe_events (id, type, object_id, outcome) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(&event.data.object.id)
    .bind(outcome.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        return Ok((Outcome::Duplicate, None));
    }
    tx.commit().await?;
    metrics::counter!("stripe_webhooks_total", "outcome" => outcome.as_str()).increment(1);
    tracing::info!(event = %event.id, kind = %event.kind, outcome = outcome.as_str(),
        "stripe webhook");
    Ok((outcome, paid))
}

/// What an event's object turned out to be, asked of Stripe.
enum Confirmed {
    /// Nothing of ours to act on, and why.
    Nothing(Outcome),
    /// Our invoice, and its status at Stripe.
    Ours {
        tenant: TenantId,
        invoice: Uuid,
        status: String,
    },
}

/// Fetches the invoice from Stripe and finds ours for it.
async fn confirm_invoice(
    db: &Db,
    payments: &Arc<dyn PaymentProvider>,
    stripe_id: &str,
) -> Result<Confirmed, WebhookError> {
    let invoice = match payments.get_invoice(stripe_id).await {
        Ok(invoice) => invoice,
        Err(PaymentError::NotFound(_)) => return Ok(Confirmed::Nothing(Outcome::UnknownObject)),
        Err(other) => return Err(other.into()),
    };
    let mut tx = db.system_tx("stripe webhook invoice").await?;
    let ours: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, tenant_id FROM invoices WHERE stripe_invoice_id = $1")
            .bind(stripe_id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(match ours {
        Some((invoice_id, tenant)) => Confirmed::Ours {
            tenant: TenantId::from_uuid(tenant),
            invoice: invoice_id,
            status: invoice.status,
        },
        // Made for one of ours whose push has not recorded it yet: the push adopts its
        // lines and total, and its charge finds it paid if it is.
        None if invoice.reference.is_some() => Confirmed::Nothing(Outcome::NoChange),
        None => Confirmed::Nothing(Outcome::NotOurs),
    })
}

/// Moves our invoice forward to Stripe's `status`; true when it moved.
async fn apply(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    status: &str,
) -> Result<bool, StoreError> {
    match status {
        "paid" => crate::collection::mark_paid(conn, tenant, invoice, None).await,
        "void" | "uncollectible" => crate::collection::close(conn, tenant, invoice, status).await,
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, SECRET, 1_700_000_000);
        assert_eq!(verify(&header, body, SECRET, 1_700_000_100, 300), Ok(()));
    }

    #[test]
    fn a_changed_body_or_another_secret_fails() {
        let header = sign(b"{}", SECRET, 1_700_000_000);
        assert_eq!(
            verify(&header, b"{ }", SECRET, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, b"{}", "whsec_other", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_or_future_timestamps_fail_even_when_signed() {
        let header = sign(b"{}", SECRET, 1_700_000_000);
        assert_eq!(
            verify(&header, b"{}", SECRET, 1_700_000_301, 300),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&header, b"{}", SECRET, 1_699_999_699, 300),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = sign(b"{}", SECRET, 1_700_000_000);
        let v1 = good.split_once("v1=").unwrap().1;
        let header = format!("t=1700000000,v1={},v1={v1},v0=abc", "00".repeat(32));
        assert_eq!(verify(&header, b"{}", SECRET, 1_700_000_000, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify(header, b"{}", SECRET, 1, 300),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }
}
