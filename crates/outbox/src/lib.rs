//! The notification outbox: messages are written to `notifications` in the transaction
//! that decides to send them (welcome mail, quota alerts, win-back steps), and delivered
//! from there by SMTP when it is configured; otherwise they stay for the operator.
//!
//! Delivery is at least once. Each message is sent under its row lock and marked sent in
//! the same transaction; a crash between the two sends it again, with the same
//! Message-ID (derived from the row id), which lets mail systems drop the twin.

mod enqueue;

use std::time::Duration;

use db::{Db, StoreError};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::watch;
use uuid::Uuid;

pub use enqueue::{
    Kind, MAX_CONFIRMATIONS_PER_DAY, NewMessage, OPTIONAL_KINDS, enqueue, erase, export_json,
    may_send_confirmation, muted, set_muted,
};

/// Attempts before a message that keeps failing transiently is given up.
pub const MAX_ATTEMPTS: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("invalid SMTP settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for OutboxError {
    fn from(error: sqlx::Error) -> Self {
        OutboxError::Store(error.into())
    }
}

/// An SMTP connection pool and the sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// `url` as lettre reads it, e.g. `smtp://mail.example.com:587?tls=required` or
    /// `smtp://127.0.0.1:2525` for a local relay.
    /// Must be called inside a Tokio runtime (the connection pool starts a task).
    pub fn new(url: &str, from: &str) -> Result<Self, OutboxError> {
        let (builder, from) = Self::parse(url, from)?;
        let transport = builder.timeout(Some(Duration::from_secs(30))).build();
        Ok(Self { transport, from })
    }

    /// Checks the settings without connecting or starting anything.
    pub fn check_settings(url: &str, from: &str) -> Result<(), OutboxError> {
        Self::parse(url, from).map(|_| ())
    }

    fn parse(url: &str, from: &str) -> Result<(AsyncSmtpTransportBuilder, Mailbox), OutboxError> {
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            // The URL may hold a password: name the problem, not the URL.
            .map_err(|error| OutboxError::Settings(format!("smtp url: {error}")))?;
        let from = from
            .parse()
            .map_err(|error| OutboxError::Settings(format!("smtp from {from:?}: {error}")))?;
        Ok((builder, from))
    }
}

#[derive(sqlx::FromRow)]
struct Pending {
    id: Uuid,
    kind: String,
    recipient: String,
    subject: String,
    body: String,
    attempts: i32,
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub sent: usize,
    pub failed: usize,
    /// Not sent: the recipient has not confirmed the address.
    pub unconfirmed: u64,
}

/// Sends up to `limit` messages that are due, oldest first. Several workers may run this
/// at once: each message is claimed in a short transaction, sent outside any, then
/// marked; a sender that dies leaves its claim to expire.
pub async fn deliver_pending(
    db: &Db,
    mailer: &Mailer,
    limit: usize,
) -> Result<Delivered, OutboxError> {
    let mut done = Delivered {
        unconfirmed: drop_unconfirmed(db).await?,
        ..Delivered::default()
    };
    for _ in 0..limit {
        let mut tx = db.system_tx("outbox claim").await?;
        // A claim lasts two minutes (well past the SMTP timeout); a sender that died
        // leaves it to expire.
        let Some(message) = sqlx::query_as::<_, Pending>(
            "UPDATE notifications SET claimed_until = now() + interval '2 minutes' \
             WHERE id = (SELECT id FROM notifications \
                 WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() \
                   AND (claimed_until IS NULL OR claimed_until < now()) \
                   AND (kind = 'email_verification' OR tenant_id IS NULL \
                        OR tenant_address_confirmed(tenant_id, recipient)) \
                 ORDER BY next_attempt_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, recipient, subject, body, attempts",
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            break;
        };
        tx.commit().await?;

        let outcome = send(mailer, &message).await;
        let mut tx = db.system_tx("outbox mark").await?;
        match outcome {
            Ok(()) => {
                sqlx::query(
                    "UPDATE notifications SET sent_at = now(), attempts = attempts + 1, \
                            claimed_until = NULL WHERE id = $1",
                )
                .bind(message.id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                done.sent += 1;
                metrics::counter!("notifications_sent_total", "kind" => message.kind.clone())
                    .increment(1);
            }
            Err(failure) => {
                let give_up = failure.permanent || message.attempts + 1 >= MAX_ATTEMPTS;
                tracing::warn!(notification = %message.id, kind = %message.kind, error = %failure.message, give_up, "notification not delivered");
                sqlx::query(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = $2, \
                            claimed_until = NULL, \
                            next_attempt_at = now() + make_interval(secs => $4), \
                            failed_at = CASE WHEN $3 THEN now() END WHERE id = $1",
                )
                .bind(message.id)
                .bind(&failure.message)
                .bind(give_up)
                .bind(retry_pause(message.attempts + 1).as_secs_f64())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                if give_up {
                    done.failed += 1;
                    metrics::counter!("notifications_failed_total", "kind" => message.kind.clone())
                        .increment(1);
                } else {
                    // The server is in trouble: leave the rest for a later pass.
                    break;
                }
            }
        }
    }
    Ok(done)
}

/// Mail to a tenant goes only to an address its owner confirmed; the confirmation mail
/// itself is the one exception. What waits for an address that is not confirmed is not
/// sent: it is marked failed, with the reason, for the operator to see.
async fn drop_unconfirmed(db: &Db) -> Result<u64, OutboxError> {
    let mut tx = db.system_tx("outbox unconfirmed").await?;
    let dropped = sqlx::query(
        "UPDATE notifications n SET failed_at = now(), \
                last_error = 'the recipient has not confirmed this address' \
         WHERE n.sent_at IS NULL AND n.failed_at IS NULL AND n.kind <> 'email_verification' \
           AND n.tenant_id IS NOT NULL \
           AND NOT tenant_address_confirmed(n.tenant_id, n.recipient)",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if dropped > 0 {
        metrics::counter!("notifications_unconfirmed_total").increment(dropped);
        tracing::info!(dropped, "mail to unconfirmed addresses not sent");
    }
    Ok(dropped)
}

/// The pause after the `attempts`th failure: 30 s, doubling, at most 2 hours; ten
/// attempts span about nine hours.
pub fn retry_pause(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    Duration::from_secs((30u64 << doublings).min(2 * 3600))
}

struct SendFailure {
    permanent: bool,
    message: String,
}

async fn send(mailer: &Mailer, pending: &Pending) -> Result<(), SendFailure> {
    let permanent = |message: String| SendFailure {
        permanent: true,
        message,
    };
    let to: Mailbox = pending
        .recipient
        .parse()
        .map_err(|error| permanent(format!("recipient: {error}")))?;
    let email = Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(&pending.subject)
        .message_id(Some(format!("<{}@outbox.saas>", pending.id.simple())))
        .header(ContentType::TEXT_PLAIN)
        .body(pending.body.clone())
        .map_err(|error| permanent(format!("message: {error}")))?;
    mailer
        .transport
        .send(email)
        .await
        .map(|_| ())
        .map_err(|error: SmtpError| SendFailure {
            permanent: error.is_permanent(),
            message: error.to_string(),
        })
}

/// Delivers the outbox until `stop`, pausing `idle` whenever it is empty or the SMTP
/// server is failing.
pub async fn run(db: Db, mailer: Mailer, idle: Duration, mut stop: watch::Receiver<bool>) {
    const BATCH: usize = 100;
    loop {
        if *stop.borrow() {
            return;
        }
        let pause = match deliver_pending(&db, &mailer, BATCH).await {
            Ok(done) if done.sent + done.failed == BATCH => Duration::ZERO,
            Ok(_) => idle,
            Err(error) => {
                tracing::warn!(%error, "outbox delivery pass failed");
                idle
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}
