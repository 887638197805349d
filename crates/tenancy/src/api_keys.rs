//! API keys. The secret is shown once, at creation; the store keeps only its SHA-256 and
//! a short display prefix.

use chrono::{DateTime, Utc};
use rand::RngCore;
use saas_core::{ApiKeyId, TenantId, TenantState};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// Every secret starts with this, so leaked keys are easy to recognise in scanners.
const SECRET_PREFIX: &str = "sk_";
/// Characters of the secret kept for display: the prefix plus eight random ones.
const DISPLAY_PREFIX_LEN: usize = SECRET_PREFIX.len() + 8;
/// Longest Authorization value worth hashing; anything longer cannot be one of our keys.
pub const MAX_SECRET_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub display_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key together with its secret, which exists only in this value and is never stored.
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub secret: String,
}

/// Who a presented secret belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
    pub tenant_state: TenantState,
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    display_prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        ApiKey {
            id: ApiKeyId::from_uuid(row.id),
            tenant_id: TenantId::from_uuid(row.tenant_id),
            name: row.name,
            display_prefix: row.display_prefix,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// The SHA-256 of a secret: what the store keeps, and a safe key for caches.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The columns `ApiKeyRow` reads, as a literal so that queries stay static strings.
macro_rules! columns {
    () => {
        "id, tenant_id, name, display_prefix, created_at, revoked_at"
    };
}

pub async fn create(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: &str,
) -> Result<CreatedApiKey, StoreError> {
    let secret = generate_secret();
    let row: ApiKeyRow = sqlx::query_as(concat!(
        "INSERT INTO api_keys (id, tenant_id, name, display_prefix, secret_hash) \
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        columns!()
    ))
    .bind(ApiKeyId::new().as_uuid())
    .bind(tenant.as_uuid())
    .bind(name)
    .bind(&secret[..DISPLAY_PREFIX_LEN])
    .bind(hash_secret(&secret))
    .fetch_one(conn)
    .await?;
    Ok(CreatedApiKey {
        key: row.into(),
        secret,
    })
}

pub async fn list(conn: &mut PgConnection, tenant: TenantId) -> Result<Vec<ApiKey>, StoreError> {
    let rows: Vec<ApiKeyRow> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys WHERE tenant_id = $1 ORDER BY id"
    ))
    .bind(tenant.as_uuid())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ApiKey::from).collect())
}

/// Revokes a key of `tenant`. Revoking twice is harmless; another tenant's key is
/// `NotFound`, exactly like a key that does not exist.
pub async fn revoke(
    conn: &mut PgConnection,
    tenant: TenantId,
    key: ApiKeyId,
) -> Result<ApiKey, StoreError> {
    let row: ApiKeyRow = sqlx::query_as(concat!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) \
         WHERE tenant_id = $1 AND id = $2 RETURNING ",
        columns!()
    ))
    .bind(tenant.as_uuid())
    .bind(key.as_uuid())
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(row.into())
}

/// Revokes every key of `tenant` (erasure, suspension by an operator); returns how many.
pub async fn revoke_all(conn: &mut PgConnection, tenant: TenantId) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Finds the tenant behind a presented secret. Runs before any tenant is known, so it
/// needs a system transaction; it reads nothing but the one row the hash points at.
pub async fn authenticate(
    conn: &mut PgConnection,
    secret: &str,
) -> Result<Option<KeyOwner>, StoreError> {
    if secret.len() > MAX_SECRET_LEN || !secret.starts_with(SECRET_PREFIX) {
        return Ok(None);
    }
    let row: Option<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT k.id, k.tenant_id, t.state FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
         WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(hash_secret(secret))
    .fetch_optional(conn)
    .await?;
    row.map(|(key_id, tenant_id, state)| {
        Ok(KeyOwner {
            key_id: ApiKeyId::from_uuid(key_id),
            tenant_id: TenantId::from_uuid(tenant_id),
            tenant_state: state.parse()?,
        })
    })
    .transpose()
}

// The secret is shown once, to its owner; it is never logged.
impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("key", &self.key)
            .field("secret", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_never_prints_its_secret() {
        let secret = generate_secret();
        let created = CreatedApiKey {
            key: ApiKey {
                id: ApiKeyId::new(),
                tenant_id: TenantId::new(),
                name: "default".into(),
                display_prefix: secret[..DISPLAY_PREFIX_LEN].into(),
                created_at: Utc::now(),
                revoked_at: None,
            },
            secret: secret.clone(),
        };
        let printed = format!("{created:?} {created:#?}");
        assert!(!printed.contains(&secret), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn secrets_are_long_random_and_recognisable() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 64);
        assert!(a.len() <= MAX_SECRET_LEN);
        assert_eq!(hash_secret(&a).len(), 32);
    }
}
