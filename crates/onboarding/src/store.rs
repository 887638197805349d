//! Signups and their steps in Postgres. A signup's id is the id of the tenant it becomes,
//! and its rows sit under the tenant wall by that id: a signup is read in a transaction
//! of that (future) tenant, with its token. Finding a retried request by its scope
//! crosses signups and needs a system transaction.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use saas_core::{SignupId, TenantId};
use serde::Serialize;
use sqlx::PgConnection;
use tenancy::StoreError;
use uuid::Uuid;

use crate::request::ValidSignup;
use crate::secrets::{FIRST_KEY_WINDOW_SECS, FirstKey, IDEMPOTENCY_WINDOW_HOURS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignupStatus {
    Pending,
    PaymentProcessing,
    Provisioning,
    Completed,
    Failed,
}

impl SignupStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            SignupStatus::Pending => "pending",
            SignupStatus::PaymentProcessing => "payment_processing",
            SignupStatus::Provisioning => "provisioning",
            SignupStatus::Completed => "completed",
            SignupStatus::Failed => "failed",
        }
    }

    pub const fn is_final(self) -> bool {
        matches!(self, SignupStatus::Completed | SignupStatus::Failed)
    }
}

impl fmt::Display for SignupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignupStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        [
            SignupStatus::Pending,
            SignupStatus::PaymentProcessing,
            SignupStatus::Provisioning,
            SignupStatus::Completed,
            SignupStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("signup status {s:?}")))
    }
}

#[derive(Clone)]
pub struct Signup {
    pub id: SignupId,
    pub email: String,
    pub company: String,
    pub plan_code: String,
    pub payment_method: Option<String>,
    pub status: SignupStatus,
    pub failure_reason: Option<String>,
    pub token_hash: Vec<u8>,
    pub stripe_customer_id: Option<String>,
    /// The signup invoice at Stripe, paid before provisioning (paid plans).
    pub stripe_invoice_id: Option<String>,
    pub tenant_id: Option<TenantId>,
    /// Hash and display prefix of the first API key, made at acceptance. `None` for a
    /// signup accepted before keys were made then (its key is made at provisioning).
    pub first_key: Option<(Vec<u8>, String)>,
    pub synthetic: bool,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct SignupRow {
    id: Uuid,
    email: String,
    company: String,
    plan_code: String,
    payment_method: Option<String>,
    status: String,
    failure_reason: Option<String>,
    token_hash: Vec<u8>,
    stripe_customer_id: Option<String>,
    stripe_invoice_id: Option<String>,
    first_key_hash: Option<Vec<u8>>,
    first_key_prefix: Option<String>,
    synthetic: bool,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Step {
    pub name: String,
    #[schema(value_type = String)]
    pub status: StepOutcome,
    pub at: DateTime<Utc>,
}

/// How a step of the workflow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum StepOutcome {
    Done,
    /// Not needed for this signup (a free plan has no card, say).
    Skipped,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Done => "done",
            StepOutcome::Skipped => "skipped",
        }
    }
}

/// A fresh signup token: 256 random bits. Only its hash is stored.
pub fn new_token() -> String {
    tenancy::tokens::random("st_")
}

pub fn hash_token(token: &str) -> Vec<u8> {
    tenancy::tokens::hash(token)
}

/// A signup made under an `Idempotency-Key`: the digest of its scope, and the signup
/// token sealed under it.
pub struct IdempotentRequest {
    pub scope_digest: Vec<u8>,
    pub token_sealed: Vec<u8>,
}

pub struct NewSignup<'a> {
    pub id: SignupId,
    pub signup: &'a ValidSignup,
    pub token_hash: Vec<u8>,
    pub first_key: &'a FirstKey,
    pub idempotency: Option<IdempotentRequest>,
    pub synthetic: bool,
}

pub async fn insert(conn: &mut PgConnection, new: NewSignup<'_>) -> Result<(), StoreError> {
    let (scope, token_sealed) = new
        .idempotency
        .map(|request| (request.scope_digest, request.token_sealed))
        .unzip();
    sqlx::query(
        "INSERT INTO signups (id, email, company, plan_code, payment_method, token_hash, \
                              idempotency_scope, token_sealed, request_hash, first_key_hash, \
                              first_key_prefix, first_key_sealed, synthetic) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(new.id.as_uuid())
    .bind(&new.signup.email)
    .bind(&new.signup.company)
    .bind(&new.signup.plan_code)
    .bind(&new.signup.payment_method)
    .bind(&new.token_hash)
    .bind(scope)
    .bind(token_sealed)
    .bind(new.signup.digest())
    .bind(&new.first_key.hash)
    .bind(&new.first_key.display_prefix)
    .bind(&new.first_key.sealed)
    .bind(new.synthetic)
    .execute(conn)
    .await?;
    Ok(())
}

/// A signup found by the scope of its `Idempotency-Key`.
#[derive(sqlx::FromRow)]
pub struct ScopedSignup {
    pub id: Uuid,
    pub request_hash: Vec<u8>,
    pub token_sealed: Option<Vec<u8>>,
    /// Older than the idempotency window: the key may be used afresh.
    pub expired: bool,
}

pub async fn find_by_idempotency_scope(
    conn: &mut PgConnection,
    scope_digest: &[u8],
) -> Result<Option<ScopedSignup>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, request_hash, token_sealed, \
                created_at < now() - make_interval(hours => $2) AS expired \
         FROM signups WHERE idempotency_scope = $1",
    )
    .bind(scope_digest)
    .bind(i32::try_from(IDEMPOTENCY_WINDOW_HOURS).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await?)
}

/// Forgets a signup's `Idempotency-Key` (and the token sealed under it).
pub async fn forget_idempotency_scope(conn: &mut PgConnection, id: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE signups SET idempotency_scope = NULL, token_sealed = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Reads a signup; `lock` takes its row lock for the rest of the transaction.
pub async fn get(conn: &mut PgConnection, id: SignupId, lock: bool) -> Result<Signup, StoreError> {
    let sql = if lock {
        "SELECT * FROM signups WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM signups WHERE id = $1"
    };
    let row: SignupRow = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound)?;
    let status: SignupStatus = row.status.parse()?;
    Ok(Signup {
        id: SignupId::from_uuid(row.id),
        email: row.email,
        company: row.company,
        plan_code: row.plan_code,
        payment_method: row.payment_method,
        status,
        failure_reason: row.failure_reason,
        token_hash: row.token_hash,
        stripe_customer_id: row.stripe_customer_id,
        stripe_invoice_id: row.stripe_invoice_id,
        // A completed signup's tenant carries the signup's id.
        tenant_id: (status == SignupStatus::Completed).then(|| TenantId::from_uuid(row.id)),
        first_key: row.first_key_hash.zip(row.first_key_prefix),
        synthetic: row.synthetic,
        created_at: row.created_at,
        completed_at: row.completed_at,
    })
}

pub async fn steps(conn: &mut PgConnection, id: SignupId) -> Result<Vec<Step>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT name, status, at FROM signup_steps WHERE signup_id = $1 ORDER BY at, name",
    )
    .bind(id.as_uuid())
    .fetch_all(conn)
    .await?)
}

/// Records a step once; recording it again keeps the first time.
pub async fn record_step(
    conn: &mut PgConnection,
    id: SignupId,
    name: &str,
    status: StepOutcome,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO signup_steps (signup_id, name, status) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(id.as_uuid())
        .bind(name)
        .bind(status)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a signup on, never out of a final status.
pub async fn set_status(
    conn: &mut PgConnection,
    id: SignupId,
    status: SignupStatus,
    failure_reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE signups SET status = $2, failure_reason = $3, \
                completed_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END \
         WHERE id = $1 AND status NOT IN ('completed', 'failed')",
    )
    .bind(id.as_uuid())
    .bind(status.as_str())
    .bind(failure_reason)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_provider_ids(
    conn: &mut PgConnection,
    id: SignupId,
    customer: Option<&str>,
    invoice: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE signups SET stripe_customer_id = coalesce($2, stripe_customer_id), \
                stripe_invoice_id = coalesce($3, stripe_invoice_id) WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(customer)
    .bind(invoice)
    .execute(conn)
    .await?;
    Ok(())
}

/// The sealed first API key, locked for this read: `(sealed, shown, expired)`, where
/// `shown` says it was read before and `expired` that its window has passed.
pub async fn sealed_first_key(
    conn: &mut PgConnection,
    id: SignupId,
) -> Result<Option<(Vec<u8>, bool, bool)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT first_key_sealed, first_key_shown_at IS NOT NULL, \
                coalesce(first_key_shown_at < now() - make_interval(secs => $2), false) \
         FROM signups WHERE id = $1 AND first_key_sealed IS NOT NULL FOR UPDATE",
    )
    .bind(id.as_uuid())
    .bind(FIRST_KEY_WINDOW_SECS as f64)
    .fetch_optional(conn)
    .await?)
}

/// Starts the first key's window (the first read that showed it).
pub async fn mark_first_key_shown(conn: &mut PgConnection, id: SignupId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE signups SET first_key_shown_at = coalesce(first_key_shown_at, now()) WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn erase_first_key(conn: &mut PgConnection, id: SignupId) -> Result<(), StoreError> {
    sqlx::query("UPDATE signups SET first_key_sealed = NULL WHERE id = $1")
        .bind(id.as_uuid())
        .execute(conn)
        .await?;
    Ok(())
}

/// Hands out, once, the plaintext first API key of a signup accepted before first keys
/// were sealed: returns it and forgets it.
pub async fn take_api_key(
    conn: &mut PgConnection,
    id: SignupId,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "WITH taken AS (SELECT id, api_key_secret FROM signups WHERE id = $1 FOR UPDATE) \
         UPDATE signups s SET api_key_secret = NULL FROM taken \
         WHERE s.id = taken.id AND taken.api_key_secret IS NOT NULL \
         RETURNING taken.api_key_secret",
    )
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?)
}

// Email, company and the token's hash stay out of logs and panics.
impl std::fmt::Debug for Signup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signup")
            .field("id", &self.id)
            .field("plan_code", &self.plan_code)
            .field("status", &self.status)
            .field("tenant_id", &self.tenant_id)
            .field("synthetic", &self.synthetic)
            .finish_non_exhaustive()
    }
}

/// The signup that became `tenant` (it shares the tenant's id), for the tenant's data
/// export, without the columns that hold secrets, their hashes or sealed copies.
pub async fn export_json(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT to_jsonb(s) - 'token_hash' - 'request_hash' - 'first_response' - 'api_key_secret' \
                - 'first_key_hash' - 'first_key_sealed' - 'idempotency_scope' - 'token_sealed' \
         FROM signups s WHERE id = $1",
        tenant,
    )
    .await
}

/// Erases the personal data and the secrets of the signup that became `tenant`. Rows
/// changed.
pub async fn erase(conn: &mut PgConnection, tenant: TenantId) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE signups SET email = 'erased+' || id::text || '@invalid', company = 'erased', \
                payment_method = NULL, first_response = NULL, api_key_secret = NULL, \
                idempotency_key = NULL, idempotency_scope = NULL, token_sealed = NULL, \
                first_key_sealed = NULL \
         WHERE id = $1",
    )
    .bind(tenant.as_uuid())
    .execute(conn)
    .await?
    .rows_affected())
}
