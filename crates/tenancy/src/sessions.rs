//! Dashboard sessions: an API key exchanged for a cookie token. Only the token's hash is
//! stored. A session is valid while unexpired, its key unrevoked and its tenant not
//! deleted; the tenant and key always come from the stored session, never the request.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use saas_core::{ApiKeyId, TenantId};
use sha2::Sha256;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;
use crate::api_keys::KeyOwner;

pub struct NewSession {
    /// Goes into the cookie; shown nowhere else.
    pub token: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

pub struct Session {
    pub owner: KeyOwner,
    pub csrf_token: String,
}

use crate::tokens::{hash, random as random_token};

/// Opens a session for the key `owner`, valid for `ttl`.
pub async fn create(
    conn: &mut PgConnection,
    owner: &KeyOwner,
    ttl: chrono::TimeDelta,
) -> Result<NewSession, StoreError> {
    let session = NewSession {
        token: random_token("ds_"),
        csrf_token: random_token(""),
        expires_at: Utc::now() + ttl,
    };
    sqlx::query(
        "INSERT INTO dashboard_sessions (token_hash, tenant_id, api_key_id, csrf_token, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash(&session.token))
    .bind(owner.tenant_id.as_uuid())
    .bind(owner.key_id.as_uuid())
    .bind(&session.csrf_token)
    .bind(session.expires_at)
    .execute(conn)
    .await?;
    Ok(session)
}

/// The live session of `token`, if any (run in a system transaction: the tenant is not
/// known before).
pub async fn find(conn: &mut PgConnection, token: &str) -> Result<Option<Session>, StoreError> {
    let row: Option<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "SELECT s.api_key_id, s.tenant_id, t.state, s.csrf_token \
         FROM dashboard_sessions s \
         JOIN api_keys k ON k.id = s.api_key_id AND k.revoked_at IS NULL \
         JOIN tenants t ON t.id = s.tenant_id AND t.state <> 'deleted' \
         WHERE s.token_hash = $1 AND s.expires_at > now()",
    )
    .bind(hash(token))
    .fetch_optional(conn)
    .await?;
    row.map(|(key, tenant, state, csrf_token)| {
        Ok(Session {
            owner: KeyOwner {
                key_id: ApiKeyId::from_uuid(key),
                tenant_id: TenantId::from_uuid(tenant),
                tenant_state: state.parse()?,
            },
            csrf_token,
        })
    })
    .transpose()
}

/// Ends the session of `token` (and any of the tenant's that have expired).
pub async fn delete(conn: &mut PgConnection, token: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE token_hash = $1 OR expires_at < now()")
        .bind(hash(token))
        .execute(conn)
        .await?;
    Ok(())
}

/// What an operator session stores of the operator token that opened it, so that
/// changing that token ends the session: an HMAC keyed by the session's own token. Only
/// the cookie's holder knows that key (the store keeps the token's hash), so a copy of
/// the table gives no way to test guesses of the operator token offline, and no two
/// sessions share a fingerprint.
fn operator_fingerprint(session_token: &str, operator_token: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(session_token.as_bytes()).expect("any key length");
    mac.update(b"operator-session:");
    mac.update(operator_token.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Opens a read-only operator session for `ttl`, bound to the operator token that
/// opened it; returns its token.
pub async fn create_operator(
    conn: &mut PgConnection,
    ttl: chrono::TimeDelta,
    operator_token: &str,
) -> Result<String, StoreError> {
    let token = random_token("os_");
    let fingerprint = operator_fingerprint(&token, operator_token);
    sqlx::query(
        "INSERT INTO operator_sessions (token_hash, expires_at, operator_token_fingerprint) \
         VALUES ($1, $2, $3)",
    )
    .bind(hash(&token))
    .bind(Utc::now() + ttl)
    .bind(fingerprint)
    .execute(conn)
    .await?;
    Ok(token)
}

/// Whether `token` is a live operator session opened with `operator_token`.
pub async fn operator_session_valid(
    conn: &mut PgConnection,
    token: &str,
    operator_token: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM operator_sessions WHERE token_hash = $1 \
                        AND expires_at > now() AND operator_token_fingerprint = $2)",
    )
    .bind(hash(token))
    .bind(operator_fingerprint(token, operator_token))
    .fetch_one(conn)
    .await?)
}
