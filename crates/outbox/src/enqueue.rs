//! Writing messages into the outbox, in the caller's transaction: a message exists
//! exactly when the change that decided to send it committed.

use db::StoreError;
use saas_core::TenantId;
use sqlx::PgConnection;
use uuid::Uuid;

/// Confirmation mails one address receives in a day, however many signups name it.
pub const MAX_CONFIRMATIONS_PER_DAY: i64 = 3;

/// What a message is, as the outbox records it (and as operators see it listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Asks the recipient to confirm the address: the one mail sent to an address not
    /// confirmed yet.
    EmailVerification,
    Winback,
    /// One of the tenant's webhook endpoints kept failing and was turned off.
    WebhookEndpointDisabled,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EmailVerification => "email_verification",
            Kind::Winback => "winback",
            Kind::WebhookEndpointDisabled => "webhook_endpoint_disabled",
        }
    }
}

/// A message to write.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub tenant: TenantId,
    pub kind: Kind,
    pub recipient: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    /// The same key is one message: a step run again writes nothing.
    pub dedup_key: &'a str,
}

/// Writes `message` on `conn`, inside the caller's transaction; false when a message
/// with its dedup key exists already.
pub async fn enqueue(
    conn: &mut PgConnection,
    message: &NewMessage<'_>,
) -> Result<bool, StoreError> {
    let written = sqlx::query(
        "INSERT INTO notifications (id, tenant_id, kind, recipient, subject, body, dedup_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dedup_key) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(message.tenant.as_uuid())
    .bind(message.kind.as_str())
    .bind(message.recipient)
    .bind(message.subject)
    .bind(message.body)
    .bind(message.dedup_key)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}

/// Whether another confirmation mail may go to `recipient` today. Takes a lock on the
/// address until the transaction ends, so that signups provisioned at the same moment
/// count each other's mail.
pub async fn may_send_confirmation(
    conn: &mut PgConnection,
    recipient: &str,
) -> Result<bool, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('confirm:' || lower($1), 0))")
        .bind(recipient)
        .execute(&mut *conn)
        .await?;
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE kind = $2 \
         AND lower(recipient) = lower($1) AND created_at > now() - interval '1 day'",
    )
    .bind(recipient)
    .bind(Kind::EmailVerification.as_str())
    .fetch_one(conn)
    .await?;
    Ok(sent < MAX_CONFIRMATIONS_PER_DAY)
}

/// The tenant's messages for its data export, oldest first.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT coalesce(jsonb_agg(to_jsonb(n) ORDER BY n.created_at), '[]') \
         FROM notifications n WHERE tenant_id = $1",
        tenant,
    )
    .await
}

/// Deletes every message to or about the tenant, sent or not. Rows deleted.
pub async fn erase(conn: &mut PgConnection, tenant: TenantId) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("DELETE FROM notifications WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .execute(conn)
            .await?
            .rows_affected(),
    )
}
