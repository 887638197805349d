//! API keys. The secret is shown once, at creation; the store keeps only its SHA-256 and
//! a short display prefix.

use chrono::{DateTime, Utc};
use saas_core::{ApiKeyId, TenantId, TenantState};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{StoreError, tokens};

/// Every secret starts with this, so leaked keys are easy to recognise in scanners.
const SECRET_PREFIX: &str = "sk_";
/// Characters of the secret kept for display: the prefix plus eight random ones.
const DISPLAY_PREFIX_LEN: usize = SECRET_PREFIX.len() + 8;
/// Keys a tenant may have unrevoked at once: enough for every environment and rotation,
/// few enough that a looping client cannot fill the store or the audit log.
pub const MAX_ACTIVE_KEYS: i64 = 20;

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
    tokens::random(SECRET_PREFIX)
}

/// Whether `secret` has the shape of a secret we issue (`sk_` and 64 lowercase hex
/// digits). Anything else is refused without asking the store.
pub fn is_well_formed(secret: &str) -> bool {
    tokens::is_well_formed(secret, SECRET_PREFIX)
}

/// The SHA-256 of a secret: what the store keeps, and a safe key for caches.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    tokens::hash(secret)
}

/// The columns `ApiKeyRow` reads, as a literal so that queries stay static strings.
macro_rules! columns {
    () => {
        "id, tenant_id, name, display_prefix, created_at, revoked_at"
    };
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("the tenant has {MAX_ACTIVE_KEYS} active keys already")]
    TooManyKeys,
    #[error("the tenant is erased")]
    TenantDeleted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a key for `tenant`, unless it is erased or has `MAX_ACTIVE_KEYS` already.
///
/// The tenant's row is locked first: an erasure (which moves the row and revokes every
/// key in one transaction) then either waits for this key and revokes it too, or has
/// committed and this creation sees the tenant deleted. Two creations at once queue on
/// the same lock, so the count below cannot be passed by racing.
pub async fn create(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: &str,
) -> Result<CreatedApiKey, CreateKeyError> {
    let secret = generate_secret();
    let key = create_with_hash(
        conn,
        tenant,
        name,
        &secret[..DISPLAY_PREFIX_LEN],
        &hash_secret(&secret),
    )
    .await?;
    Ok(CreatedApiKey { key, secret })
}

/// A secret made before its key is stored: for a tenant that does not exist yet, whose
/// first key must be shown by someone other than who stores it. Only the hash and the
/// display prefix travel to the store.
pub struct PreparedSecret {
    pub secret: String,
}

impl PreparedSecret {
    pub fn generate() -> Self {
        Self {
            secret: generate_secret(),
        }
    }

    pub fn hash(&self) -> Vec<u8> {
        hash_secret(&self.secret)
    }

    pub fn display_prefix(&self) -> &str {
        &self.secret[..DISPLAY_PREFIX_LEN]
    }
}

/// Like [`create`], for a secret prepared earlier of which only the hash is known here.
pub async fn create_with_hash(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: &str,
    display_prefix: &str,
    secret_hash: &[u8],
) -> Result<ApiKey, CreateKeyError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::from)?;
    match state.as_deref() {
        None => return Err(StoreError::NotFound.into()),
        Some("deleted") => return Err(CreateKeyError::TenantDeleted),
        Some(_) => {}
    }
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    if active >= MAX_ACTIVE_KEYS {
        return Err(CreateKeyError::TooManyKeys);
    }
    let row: ApiKeyRow = sqlx::query_as(concat!(
        "INSERT INTO api_keys (id, tenant_id, name, display_prefix, secret_hash) \
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        columns!()
    ))
    .bind(ApiKeyId::new().as_uuid())
    .bind(tenant.as_uuid())
    .bind(name)
    .bind(display_prefix)
    .bind(secret_hash)
    .fetch_one(conn)
    .await
    .map_err(StoreError::from)?;
    Ok(row.into())
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

/// What a revocation did.
#[derive(Debug)]
pub struct Revocation {
    pub key: ApiKey,
    /// False when the key was revoked already: nothing changed, nothing to record.
    pub changed: bool,
}

/// Revokes a key of `tenant`. Revoking twice is harmless and changes nothing; another
/// tenant's key is `NotFound`, exactly like a key that does not exist.
pub async fn revoke(
    conn: &mut PgConnection,
    tenant: TenantId,
    key: ApiKeyId,
) -> Result<Revocation, StoreError> {
    let revoked: Option<ApiKeyRow> = sqlx::query_as(concat!(
        "UPDATE api_keys SET revoked_at = now() \
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING ",
        columns!()
    ))
    .bind(tenant.as_uuid())
    .bind(key.as_uuid())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = revoked {
        return Ok(Revocation {
            key: row.into(),
            changed: true,
        });
    }
    let row: ApiKeyRow = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.as_uuid())
    .bind(key.as_uuid())
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(Revocation {
        key: row.into(),
        changed: false,
    })
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
    if !is_well_formed(secret) {
        return Ok(None);
    }
    // An erased tenant has no access, whatever key it may still hold.
    let row: Option<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT k.id, k.tenant_id, t.state FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
         WHERE k.secret_hash = $1 AND k.revoked_at IS NULL AND t.state <> 'deleted'",
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

/// The tenant's keys for its data export, without their secrets' hashes.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT coalesce(jsonb_agg(to_jsonb(k) - 'secret_hash' ORDER BY k.created_at), '[]') \
         FROM api_keys k WHERE tenant_id = $1",
        tenant,
    )
    .await
}

/// Erases the labels the tenant gave its keys, and revokes any still live. Rows changed.
pub async fn erase_labels(conn: &mut PgConnection, tenant: TenantId) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE api_keys SET name = 'erased', revoked_at = coalesce(revoked_at, now()) \
         WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .execute(conn)
    .await?
    .rows_affected())
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
        assert!(is_well_formed(&a));
        assert_eq!(hash_secret(&a).len(), 32);
    }

    #[test]
    fn only_the_shape_we_issue_is_well_formed() {
        let good = format!("sk_{}", "0a".repeat(32));
        assert!(is_well_formed(&good));
        for bad in [
            "",
            "sk_",
            "x",
            &format!("pk_{}", "0a".repeat(32)),
            &format!("sk_{}", "0A".repeat(32)),
            &format!("sk_{}", "0a".repeat(31)),
            &format!("sk_{}0", "0a".repeat(32)),
            &format!("sk_{}", "zz".repeat(32)),
            &format!("sk_{}", "é".repeat(32)),
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
