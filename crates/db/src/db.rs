use std::time::Duration;

use saas_core::TenantId;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::StoreError;

/// The Postgres schema migrations, embedded in the binary. They run as the owner role.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub type DbTx = Transaction<'static, Postgres>;

/// Longest an ingest statement may run; its transaction is ended by Postgres once idle
/// for twice that.
const INGEST_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The advisory lock key that orders a tenant's ingest against the closing of its
/// periods. The argument is a formatted UUID, never client text.
fn ingest_lock(tenant_uuid: &str) -> String {
    format!("hashtextextended('ingest:{tenant_uuid}', 0)")
}

/// The advisory lock key that orders every ingest against a change of dedup generation:
/// each ingest transaction holds it shared, and the change takes it exclusively, so no
/// batch of the old generation is still writing once keys go into the new one.
const DEDUP_GENERATION_LOCK: &str = "hashtextextended('usage dedup generation', 0)";

/// The service's pool, connected as the role that row-level security applies to.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Connects lazily, so the service starts (and `/healthz` answers) while Postgres is
    /// still coming up; requests then fail with 503 until it is reachable.
    pub fn connect_lazy(options: PgConnectOptions, max_connections: u32) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Self { pool }
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction that can see and write only `tenant`'s rows.
    pub async fn tenant_tx(&self, tenant: TenantId) -> Result<DbTx, StoreError> {
        // One round trip for both. The value is a formatted UUID, never client text.
        let begin = format!(
            "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
            tenant.as_uuid().hyphenated()
        );
        Ok(self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?)
    }

    /// A transaction of `tenant` that meters usage. It holds the tenant's ingest lock
    /// shared until it ends, so that closing one of the tenant's periods
    /// ([`Self::lock_out_ingest`]) waits for it, and the dedup generation lock shared, so
    /// that a change of generation ([`Self::lock_out_all_ingest`]) does too. Still one
    /// round trip.
    pub async fn ingest_tx(&self, tenant: TenantId) -> Result<DbTx, StoreError> {
        let uuid = tenant.as_uuid().hyphenated();
        // Bounded: a batch's statements are short, and one stuck (a frozen process)
        // must let go of the lock and its counter rows rather than hold them for ever.
        let begin = format!(
            "BEGIN; SELECT set_config('app.tenant_id', '{uuid}', true), \
                    set_config('statement_timeout', '{statement}', true), \
                    set_config('idle_in_transaction_session_timeout', '{idle}', true); \
             SELECT pg_advisory_xact_lock_shared({lock}), \
                    pg_advisory_xact_lock_shared({DEDUP_GENERATION_LOCK})",
            statement = INGEST_STATEMENT_TIMEOUT.as_millis(),
            idle = (INGEST_STATEMENT_TIMEOUT * 2).as_millis(),
            lock = ingest_lock(&uuid.to_string())
        );
        Ok(self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?)
    }

    /// In `tx` (of `tenant`), waits for up to `limit` until every ingest transaction of
    /// the tenant running now has ended, by taking its ingest lock exclusively until `tx`
    /// ends (new ones wait meanwhile); whether they all ended in time. When not, `tx` is
    /// aborted and must be dropped.
    pub async fn lock_out_ingest(
        tx: &mut DbTx,
        tenant: TenantId,
        limit: Duration,
    ) -> Result<bool, StoreError> {
        let lock = ingest_lock(&tenant.as_uuid().hyphenated().to_string());
        lock_within(tx, &lock, limit).await
    }

    /// Like [`Self::lock_out_ingest`], for every tenant at once: in `tx`, waits for up to
    /// `limit` until no ingest transaction is running, and keeps new ones waiting until
    /// `tx` ends. Every ingest waits meanwhile, so `tx` must be short.
    pub async fn lock_out_all_ingest(tx: &mut DbTx, limit: Duration) -> Result<bool, StoreError> {
        lock_within(tx, DEDUP_GENERATION_LOCK, limit).await
    }

    /// A transaction that may cross tenants. `purpose` names the caller in the logs; use
    /// it only where no single tenant is known yet or the work spans tenants by design.
    pub async fn system_tx(&self, purpose: &'static str) -> Result<DbTx, StoreError> {
        tracing::trace!(purpose, "system transaction");
        Ok(self
            .pool
            .begin_with("BEGIN; SELECT set_config('app.system', 'on', true)")
            .await?)
    }

    /// Bounds the rest of `tx`: each statement may run for `limit`, and Postgres ends the
    /// session once it has sat idle in the transaction for twice that. Work that holds a
    /// lock others wait for (the relay cursor) uses it, so that a holder that hangs
    /// rather than dies (frozen, cut off) lets go.
    pub async fn bound(tx: &mut DbTx, limit: Duration) -> Result<(), StoreError> {
        Self::bound_idle(tx, limit, limit * 2).await
    }

    /// Like [`Self::bound`], with an idle limit of its own: for work whose statements
    /// follow each other with nothing slow in between, so that a holder frozen between
    /// two of them lets go within `idle`, however long one statement may run.
    pub async fn bound_idle(
        tx: &mut DbTx,
        statement: Duration,
        idle: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), \
                    set_config('idle_in_transaction_session_timeout', $2, true)",
        )
        .bind(statement.as_millis().to_string())
        .bind(idle.as_millis().to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Round trip to Postgres, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Takes the advisory lock `key` exclusively in `tx`, waiting for up to `limit`; whether
/// it was taken. When not, `tx` is aborted and must be dropped.
async fn lock_within(tx: &mut DbTx, key: &str, limit: Duration) -> Result<bool, StoreError> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(limit.as_millis().to_string())
        .execute(&mut **tx)
        .await?;
    let lock = format!("SELECT pg_advisory_xact_lock({key})");
    match sqlx::query(sqlx::AssertSqlSafe(lock))
        .execute(&mut **tx)
        .await
    {
        Ok(_) => Ok(true),
        // lock_not_available: some transaction still holds it.
        Err(error) if is_lock_timeout(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Whether `error` is Postgres giving up on a lock after `lock_timeout`.
pub fn is_lock_timeout(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}
