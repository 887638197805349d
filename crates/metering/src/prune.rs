//! Pruning the ledger. Event ids must be remembered for the deduplication window
//! (35 days, the oldest timestamp an event may carry); past a retention a little longer
//! than that, rows that the relay has already copied to ClickHouse are deleted, a batch
//! at a time so that no long transaction holds back the relay's horizon.

use chrono::{DateTime, TimeDelta, Utc};
use tenancy::{Db, StoreError};

use crate::event::MAX_EVENT_AGE;

/// Longest a prune statement may run: a pass is a bounded batch, and one that ran
/// longer would hold back the relay's horizon.
const PRUNE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long ledger rows are kept after ingestion: the dedup window plus a margin.
pub const DEFAULT_RETENTION: TimeDelta = MAX_EVENT_AGE.checked_add(&TimeDelta::days(5)).unwrap();

/// Deletes up to `batch` relayed events ingested before `now - retention`; returns how
/// many it deleted.
pub async fn prune_once(
    db: &Db,
    now: DateTime<Utc>,
    retention: TimeDelta,
    batch: i64,
) -> Result<u64, StoreError> {
    let retention = retention.max(MAX_EVENT_AGE);
    let mut tx = db.system_tx("usage ledger prune").await?;
    Db::bound(&mut tx, PRUNE_TIMEOUT).await?;
    let deleted = sqlx::query(
        "DELETE FROM usage_events WHERE ctid IN ( \
             SELECT e.ctid FROM usage_events e, usage_relay_cursor c \
             WHERE e.ingested_at < $1 \
               AND (e.ledger_xid, e.ledger_seq) <= (c.ledger_xid, c.ledger_seq) \
             LIMIT $2)",
    )
    .bind(now - retention)
    .bind(batch)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if deleted > 0 {
        metrics::counter!("usage_events_pruned_total").increment(deleted);
        tracing::info!(deleted, "pruned usage events past the retention");
    }
    Ok(deleted)
}

/// Sets the ledger's size gauges: its rows (the planner's estimate, free to read) and
/// its bytes, indexes included. Both must level off under a steady load once pruning
/// keeps pace.
pub async fn measure_ledger(db: &Db) -> Result<(), StoreError> {
    let mut tx = db.system_tx("usage ledger size").await?;
    let (rows, bytes): (f64, i64) = sqlx::query_as(
        "SELECT greatest(reltuples, 0)::float8, pg_total_relation_size(oid) \
         FROM pg_class WHERE oid = 'usage_events'::regclass",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::gauge!("usage_ledger_rows").set(rows);
    metrics::gauge!("usage_ledger_bytes").set(bytes as f64);
    Ok(())
}
