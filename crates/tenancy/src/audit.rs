//! The audit log: append-only, one row per state change or operator action, sealed into
//! a hash chain.
//!
//! Writers append plain rows and never wait for each other. [`seal_pending`] (a worker
//! of the service, every second, and every operator read of the log) gives the waiting
//! entries their place in the chain and their hash under the chain head's lock, in one
//! short transaction; [`verify_chain`] recomputes the sealed chain.

use saas_core::{TenantId, TenantState};
use serde_json::Value;
use sqlx::PgConnection;

use crate::{Db, StoreError};

/// Who acted. Rendered into the log as text that carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Tenant(saas_core::ApiKeyId),
    System(&'static str),
}

impl Actor {
    pub fn as_text(&self) -> String {
        match self {
            Actor::Operator => "operator".to_owned(),
            Actor::Tenant(key) => format!("tenant:{key}"),
            Actor::System(worker) => format!("system:{worker}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub tenant_id: Option<TenantId>,
    pub actor: Actor,
    pub action: &'static str,
    pub from_state: Option<TenantState>,
    pub to_state: Option<TenantState>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
}

impl AuditEntry {
    pub fn new(tenant_id: Option<TenantId>, actor: Actor, action: &'static str) -> Self {
        Self {
            tenant_id,
            actor,
            action,
            from_state: None,
            to_state: None,
            reason: None,
            request_id: None,
            details: Value::Object(Default::default()),
        }
    }
}

/// Appends `entry`; returns its id. Readiness probes (synthetic tenants) are kept out of
/// the log by design: their entries are not written, so probing leaves no trace in it.
pub async fn record(
    conn: &mut PgConnection,
    entry: &AuditEntry,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO audit_log (tenant_id, actor, action, from_state, to_state, reason, \
                                request_id, details) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
         WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE id = $1 AND synthetic) \
         RETURNING id",
    )
    .bind(entry.tenant_id.map(|id| id.as_uuid()))
    .bind(entry.actor.as_text())
    .bind(entry.action)
    .bind(entry.from_state.map(TenantState::as_str))
    .bind(entry.to_state.map(TenantState::as_str))
    .bind(&entry.reason)
    .bind(&entry.request_id)
    .bind(&entry.details)
    .fetch_optional(conn)
    .await?)
}

/// Entries sealed per call: a bounded transaction, however far behind the sealer is.
pub const SEAL_BATCH: i32 = 10_000;

/// Seals up to [`SEAL_BATCH`] waiting entries, in the order they were appended, in one
/// short system transaction (the chain spans tenants); returns how many.
pub async fn seal_pending(db: &Db) -> Result<u64, StoreError> {
    let mut tx = db.system_tx("audit sealing").await?;
    let sealed: i32 = sqlx::query_scalar("SELECT audit_seal($1)")
        .bind(SEAL_BATCH)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u64::try_from(sealed).unwrap_or_default())
}

/// One stored entry, as operators read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEntry {
    pub chain_seq: i64,
    pub tenant_id: Option<uuid::Uuid>,
    pub actor: String,
    pub action: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub hash: Vec<u8>,
}

/// Entries in chain order after `after`, optionally of one tenant. Needs a system
/// transaction to see more than one tenant's entries.
pub async fn list(
    conn: &mut PgConnection,
    tenant: Option<TenantId>,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEntry>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT chain_seq, tenant_id, actor, action, from_state, to_state, reason, request_id, \
                details, created_at, hash \
         FROM audit_log WHERE ($1::uuid IS NULL OR tenant_id = $1) AND chain_seq > $2 \
               AND hash IS NOT NULL \
         ORDER BY chain_seq LIMIT $3",
    )
    .bind(tenant.map(|t| t.as_uuid()))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// What verifying the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub entries: i64,
    /// The chain position of the first entry whose hash or link does not match, if any.
    pub first_broken: Option<i64>,
}

/// Recomputes every entry's hash from its content and the previous entry's hash, in
/// chain order. Needs a system transaction (the chain spans tenants).
pub async fn verify_chain(conn: &mut PgConnection) -> Result<ChainReport, StoreError> {
    let (entries, first_broken): (i64, Option<i64>) = sqlx::query_as(
        "WITH chain AS ( \
             SELECT chain_seq, hash, prev_hash, \
                    lag(hash) OVER (ORDER BY chain_seq) AS previous_hash, \
                    lag(chain_seq) OVER (ORDER BY chain_seq) AS previous_seq, \
                    audit_entry_hash(prev_hash, chain_seq, tenant_id, actor, action, from_state, \
                        to_state, reason, request_id, details, created_at) AS recomputed \
             FROM audit_log WHERE hash IS NOT NULL) \
         SELECT (SELECT count(*) FROM audit_log WHERE hash IS NOT NULL), \
                min(chain_seq) FILTER (WHERE hash <> recomputed \
                    OR prev_hash IS DISTINCT FROM coalesce(previous_hash, sha256(''::bytea)) \
                    OR chain_seq <> coalesce(previous_seq, 0) + 1) \
         FROM chain",
    )
    .fetch_one(&mut *conn)
    .await?;
    // The head must agree with the last entry: a deleted tail shows up here.
    let (head_seq, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT chain_seq, hash FROM audit_chain_head")
            .fetch_one(&mut *conn)
            .await?;
    let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT chain_seq, hash FROM audit_log WHERE hash IS NOT NULL \
         ORDER BY chain_seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let tail_intact = match &last {
        Some((seq, hash)) => *seq == head_seq && *hash == head_hash,
        None => head_seq == 0,
    };
    let first_broken = first_broken.or((!tail_intact).then_some(head_seq));
    Ok(ChainReport {
        entries,
        first_broken,
    })
}

/// The tenant's audit entries for its data export, in chain order.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.chain_seq), '[]') \
         FROM audit_log a WHERE tenant_id = $1",
        tenant,
    )
    .await
}
