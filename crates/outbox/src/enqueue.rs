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
    /// Usage crossed 80% or 100% of a quota.
    QuotaAlert,
    /// A payment failed (with when it is tried again).
    PaymentFailed,
    Suspension,
    Reactivation,
    /// An invoice was issued.
    InvoiceAvailable,
}

/// The kinds a tenant may turn off; the others it always gets.
pub const OPTIONAL_KINDS: &[Kind] = &[
    Kind::QuotaAlert,
    Kind::PaymentFailed,
    Kind::Suspension,
    Kind::Reactivation,
    Kind::InvoiceAvailable,
    Kind::Winback,
];

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EmailVerification => "email_verification",
            Kind::Winback => "winback",
            Kind::WebhookEndpointDisabled => "webhook_endpoint_disabled",
            Kind::QuotaAlert => "quota_alert",
            Kind::PaymentFailed => "payment_failed",
            Kind::Suspension => "suspension",
            Kind::Reactivation => "reactivation",
            Kind::InvoiceAvailable => "invoice_available",
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
/// with its dedup key exists already, or the tenant turned its kind off.
pub async fn enqueue(
    conn: &mut PgConnection,
    message: &NewMessage<'_>,
) -> Result<bool, StoreError> {
    let written = sqlx::query(
        "INSERT INTO notifications (id, tenant_id, kind, recipient, subject, body, dedup_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7 \
         WHERE NOT EXISTS (SELECT 1 FROM notification_settings \
                           WHERE tenant_id = $2 AND $3 = ANY (muted)) \
         ON CONFLICT (dedup_key) DO NOTHING",
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

/// Deletes every message to or about the tenant, sent or not, and its settings. Rows
/// deleted.
pub async fn erase(conn: &mut PgConnection, tenant: TenantId) -> Result<u64, StoreError> {
    let mut erased = 0;
    for table in ["notifications", "notification_settings"] {
        erased += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE tenant_id = $1"
        )))
        .bind(tenant.as_uuid())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(erased)
}

/// The optional kinds the tenant turned off.
pub async fn muted(conn: &mut PgConnection, tenant: TenantId) -> Result<Vec<Kind>, StoreError> {
    let muted: Option<Vec<String>> =
        sqlx::query_scalar("SELECT muted FROM notification_settings WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_optional(conn)
            .await?;
    let muted = muted.unwrap_or_default();
    Ok(OPTIONAL_KINDS
        .iter()
        .copied()
        .filter(|kind| muted.iter().any(|m| m == kind.as_str()))
        .collect())
}

/// Turns each optional kind in `changes` on (`true`) or off.
pub async fn set_muted(
    conn: &mut PgConnection,
    tenant: TenantId,
    changes: &[(Kind, bool)],
) -> Result<(), StoreError> {
    let (mut mute, mut unmute) = (Vec::new(), Vec::new());
    for (kind, wanted) in changes {
        if *wanted {
            unmute.push(kind.as_str());
        } else {
            mute.push(kind.as_str());
        }
    }
    sqlx::query(
        "INSERT INTO notification_settings AS s (tenant_id, muted) \
         VALUES ($1, ARRAY(SELECT DISTINCT unnest($2::text[]))) \
         ON CONFLICT (tenant_id) DO UPDATE SET updated_at = now(), muted = ARRAY( \
             SELECT DISTINCT m FROM unnest(s.muted || $2::text[]) AS m \
             WHERE m <> ALL ($3::text[]))",
    )
    .bind(tenant.as_uuid())
    .bind(&mute)
    .bind(&unmute)
    .execute(conn)
    .await?;
    Ok(())
}
