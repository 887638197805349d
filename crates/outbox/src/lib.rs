//! The notification outbox: messages are written to `notifications` in the transaction
//! that decides to send them (welcome mail, quota alerts, win-back steps), and delivered
//! from there by SMTP when it is configured; otherwise they stay for the operator.
//!
//! Delivery is at least once. Each message is sent under its row lock and marked sent in
//! the same transaction; a crash between the two sends it again, with the same
//! Message-ID (derived from the row id), which lets mail systems drop the twin.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tenancy::{Db, StoreError};
use tokio::sync::watch;
use uuid::Uuid;

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
}

/// Sends up to `limit` undelivered messages, oldest first. Several workers may run this
/// at once: each message is taken under its row lock, skipping locked ones.
pub async fn deliver_pending(
    db: &Db,
    mailer: &Mailer,
    limit: usize,
) -> Result<Delivered, OutboxError> {
    let mut done = Delivered::default();
    for _ in 0..limit {
        let mut tx = db.system_tx("outbox delivery").await?;
        let Some(message) = sqlx::query_as::<_, Pending>(
            "SELECT id, kind, recipient, subject, body, attempts FROM notifications \
             WHERE sent_at IS NULL AND failed_at IS NULL \
             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            break;
        };
        match send(mailer, &message).await {
            Ok(()) => {
                sqlx::query("UPDATE notifications SET sent_at = now(), attempts = attempts + 1 WHERE id = $1")
                    .bind(message.id)
                    .execute(&mut *tx)
                    .await?;
                done.sent += 1;
                metrics::counter!("notifications_sent_total", "kind" => message.kind.clone())
                    .increment(1);
            }
            Err(failure) => {
                let give_up = failure.permanent || message.attempts + 1 >= MAX_ATTEMPTS;
                tracing::warn!(notification = %message.id, kind = %message.kind, error = %failure.message, give_up, "notification not delivered");
                sqlx::query(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = $2, \
                            failed_at = CASE WHEN $3 THEN now() END WHERE id = $1",
                )
                .bind(message.id)
                .bind(&failure.message)
                .bind(give_up)
                .execute(&mut *tx)
                .await?;
                if give_up {
                    done.failed += 1;
                    metrics::counter!("notifications_failed_total", "kind" => message.kind.clone())
                        .increment(1);
                }
                tx.commit().await?;
                // The server is in trouble: leave the rest for the next pass.
                if !failure.permanent {
                    break;
                }
                continue;
            }
        }
        tx.commit().await?;
    }
    Ok(done)
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
