//! Confirming a tenant's email address. Mail other than the confirmation itself goes
//! only to confirmed addresses (the outbox checks), so a signup naming someone else's
//! address can make us send that person one short, fixed message and nothing more.

use saas_core::TenantId;
use sqlx::PgConnection;

use crate::StoreError;
use crate::tokens::{self, hash};

const TOKEN_PREFIX: &str = "ev_";
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
