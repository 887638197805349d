use std::time::Duration;

use saas_core::TenantId;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::StoreError;

/// The Postgres schema migrations, embedded in the binary. They run as the owner role.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub type DbTx = Transaction<'static, Postgres>;

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
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), \
                    set_config('idle_in_transaction_session_timeout', $2, true)",
        )
        .bind(limit.as_millis().to_string())
        .bind((limit * 2).as_millis().to_string())
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
