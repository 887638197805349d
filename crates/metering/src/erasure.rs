//! Removing a tenant's usage for GDPR erasure, from both stores, checked.
//!
//! Order matters: the Postgres ledger goes first, under the relay cursor's lock, so that
//! no relay batch still holding the tenant's rows can write them to ClickHouse after the
//! ClickHouse delete. Then ClickHouse deletes by mutation, which is waited for and
//! checked by counting what is left.

use std::time::{Duration, Instant};

use clickhouse::Row;
use saas_core::TenantId;
use serde::Deserialize;
use tenancy::{Db, StoreError};

use crate::clickhouse_sink::{ClickHouseSink, SinkError};

/// Longest the ledger part of an erasure may take per statement; past it the erasure job
/// fails and is tried again.
const ERASURE_LEDGER_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest it may sit between statements: nothing slow happens there, and it holds the
/// relay cursor, so a process frozen there must let go of it soon.
const ERASURE_LEDGER_IDLE: Duration = Duration::from_secs(5);

/// Deletes the tenant's ledger rows, dedup keys, counters and alerts; returns how many rows went.
pub async fn erase_ledger(db: &Db, tenant: TenantId) -> Result<u64, StoreError> {
    let mut tx = db.system_tx("erasure ledger").await?;
    // It holds the relay cursor: bounded, so that a hung erasure cannot stop relaying.
    Db::bound_idle(&mut tx, ERASURE_LEDGER_TIMEOUT, ERASURE_LEDGER_IDLE).await?;
    // Waits for a relay batch in flight to finish; none starts until this commits.
    sqlx::query("SELECT 1 FROM usage_relay_cursor FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let mut deleted = 0;
    for sql in [
        "DELETE FROM usage_batches WHERE tenant_id = $1",
        // Keys are hashes of the tenant's event ids, and those ids are the tenant's words.
        "DELETE FROM usage_event_ids WHERE tenant_id = $1",
        "DELETE FROM usage_counters WHERE tenant_id = $1",
        "DELETE FROM quota_alerts WHERE tenant_id = $1",
    ] {
        deleted += sqlx::query(sql)
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(deleted)
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the ClickHouse delete did not finish within {0:?}")]
    Timeout(Duration),
    #[error("{0} rows of the tenant are still in ClickHouse after the delete")]
    Leftover(u64),
}

#[derive(Row, Deserialize)]
struct Pending {
    pending: u64,
}

impl ClickHouseSink {
    /// Deletes every event of `tenant`, and its minutes, on every shard (its rows live on
    /// one, but the delete does not rely on it), and waits until the mutations are done
    /// and no row is left; returns how many events there were. Running it again is
    /// harmless.
    pub async fn erase_tenant(
        &self,
        tenant: TenantId,
        wait: Duration,
    ) -> Result<u64, ErasureError> {
        let tenant_text = tenant.as_uuid().to_string();
        let before = self.event_count(tenant).await?;
        let (shards, tables) = self.owner_shards();
        if before > 0 || self.minute_rows(tenant).await? > 0 {
            for shard in shards {
                // `mutations_sync` is not known to every version; the wait below is.
                for table in [tables.events, tables.minutes] {
                    shard
                        .query(&format!(
                            "ALTER TABLE {table} DELETE WHERE tenant_id = toUUID(?)"
                        ))
                        .bind(&tenant_text)
                        .execute()
                        .await
                        .map_err(SinkError::from)?;
                }
            }
        }
        let deadline = Instant::now() + wait;
        for shard in shards {
            loop {
                let pending = shard
                    .query(
                        "SELECT count() AS pending FROM system.mutations \
                         WHERE database = currentDatabase() AND table IN (?, ?) \
                           AND is_done = 0 AND position(command, ?) > 0",
                    )
                    .bind(tables.events)
                    .bind(tables.minutes)
                    .bind(&tenant_text)
                    .fetch_one::<Pending>()
                    .await
                    .map_err(SinkError::from)?
                    .pending;
                if pending == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ErasureError::Timeout(wait));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        match self.event_count(tenant).await? + self.minute_rows(tenant).await? {
            0 => Ok(before),
            left => Err(ErasureError::Leftover(left)),
        }
    }
}
