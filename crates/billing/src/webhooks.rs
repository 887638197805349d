//! Stripe's webhooks: what Stripe tells us happened to an invoice (paid in its
//! dashboard, voided, marked uncollectible).
//!
//! - The signature is checked on the raw body, and the event read into our own type, by
//!   the payments crate (`webhook_signature`, `webhook_event`).
//! - Each event is acted on once: its id is stored in the transaction that acts on it.
//! - The payload is never trusted for state: the object is fetched from Stripe, which
//!   both confirms that it exists (an event about an unknown object changes nothing) and
//!   makes the arrival order irrelevant. Our invoice only ever moves forward
//!   (`draft`/`open` to `paid`, `void` or `uncollectible`), so a late event about an
//!   older state is a no-op.
//! - Types we do not act on are answered 2xx and ignored.

use std::sync::Arc;

use payments::webhook_event::ProviderEvent;
use payments::{PaymentError, PaymentProvider};
use saas_core::TenantId;
use serde::Serialize;
use tenancy::{Db, StoreError};
use uuid::Uuid;

pub use payments::webhook_signature::{DEFAULT_TOLERANCE_SECS, SignatureError, sign, verify};

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
    event: &ProviderEvent,
) -> Result<(Outcome, Option<Paid>), WebhookError> {
    let confirmed = match &event.invoice {
        Some(stripe_id) => confirm_invoice(db, payments, stripe_id).await?,
        None => Confirmed::Nothing(Outcome::Ignored),
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
    .bind(&event.object_id)
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
    let ours = crate::invoices::payment::by_stripe_id(&mut tx, stripe_id).await?;
    tx.commit().await?;
    Ok(match ours {
        Some((invoice_id, tenant)) => Confirmed::Ours {
            tenant,
            invoice: invoice_id,
            status: invoice.status,
        },
        // Made for one of ours whose push has not recorded it yet: the push finds and
        // checks it, and its charge finds it paid if it is.
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
