//! Confirming a tenant's email address. Mail other than the confirmation itself goes
//! only to confirmed addresses (the outbox checks), so a signup naming someone else's
//! address can make us send that person one short, fixed message and nothing more.

use saas_core::TenantId;
use sqlx::PgConnection;

use crate::StoreError;
use crate::tokens::{self, hash};

const TOKEN_PREFIX: &str = "ev_";
/// Confirmation mails one address receives in a day, however many signups name it.
pub const MAX_CONFIRMATIONS_PER_DAY: i64 = 3;

/// Whether `token` has the shape of one we issue (`ev_` and 64 lowercase hex digits).
pub fn is_well_formed(token: &str) -> bool {
    tokens::is_well_formed(token, TOKEN_PREFIX)
}

/// Starts a confirmation of `tenant`'s address: returns the token to mail (the store
/// keeps its hash only), replacing any earlier one.
pub async fn start(conn: &mut PgConnection, tenant: TenantId) -> Result<String, StoreError> {
    let token = tokens::random(TOKEN_PREFIX);
    sqlx::query("UPDATE tenants SET email_verification_hash = $2 WHERE id = $1")
        .bind(tenant.as_uuid())
        .bind(hash(&token))
        .execute(conn)
        .await?;
    Ok(token)
}

/// Whether another confirmation mail may go to `recipient` today. Takes a lock on the
/// address until the transaction ends, so that signups provisioned at the same moment
/// count each other's mail.
pub async fn may_mail(conn: &mut PgConnection, recipient: &str) -> Result<bool, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('confirm:' || lower($1), 0))")
        .bind(recipient)
        .execute(&mut *conn)
        .await?;
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE kind = 'email_verification' \
         AND lower(recipient) = lower($1) AND created_at > now() - interval '1 day'",
    )
    .bind(recipient)
    .fetch_one(conn)
    .await?;
    Ok(sent < MAX_CONFIRMATIONS_PER_DAY)
}

/// Confirms the address the token was mailed to; the tenant, or `None` for a token that
/// is unknown, used already, or of an erased tenant. Runs in a system transaction: the
/// token is the only credential.
pub async fn confirm(conn: &mut PgConnection, token: &str) -> Result<Option<TenantId>, StoreError> {
    if !is_well_formed(token) {
        return Ok(None);
    }
    let tenant: Option<uuid::Uuid> = sqlx::query_scalar(
        "UPDATE tenants SET email_verified_at = now(), email_verification_hash = NULL \
         WHERE email_verification_hash = $1 AND state <> 'deleted' RETURNING id",
    )
    .bind(hash(token))
    .fetch_optional(conn)
    .await?;
    Ok(tenant.map(TenantId::from_uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_issued_shapes_are_well_formed() {
        assert!(is_well_formed(&format!("ev_{}", "ab".repeat(32))));
        for bad in ["", "ev_", "ev_xyz", &format!("sk_{}", "ab".repeat(32))] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
