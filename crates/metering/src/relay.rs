//! The relay: copies committed events from the Postgres ledger to ClickHouse, in order,
//! in batches, until told to stop.
//!
//! Exactly one relay works at a time (whoever holds the cursor row's lock); the others
//! wait their turn. A batch is inserted into ClickHouse first and the cursor moved after,
//! in the same transaction that holds the lock: a crash in between replays the batch,
//! which ClickHouse absorbs (ReplacingMergeTree, reads with FINAL). ClickHouse being down
//! only delays the relay; ingestion never waits for it.
//!
//! A holder that hangs rather than dies must not keep the cursor: each step gives up
//! after the relay timeout (its statements, and its ClickHouse insert, are bounded by
//! it), and Postgres ends a holder's session once it has sat in its transaction for
//! twice that, as one frozen or cut off from the network would. The lock then goes to
//! the next relay, which replays the batch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tenancy::{Db, StoreError};
use tokio::sync::watch;

use crate::clickhouse_sink::{ClickHouseSink, SinkError};
use crate::counters::parse_u64;
use crate::usage_rows::{LedgerPosition, UsageRow, to_clickhouse_time};

#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub batch_size: u32,
    /// Pause when there was nothing (or little) to copy.
    pub idle_wait: Duration,
    /// Longest pause between retries while ClickHouse or Postgres is failing.
    pub max_backoff: Duration,
    /// Longest a step's statement or ClickHouse insert may take; a holder idle in its
    /// transaction for twice this loses its session, and the cursor with it.
    pub timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 10_000,
            idle_wait: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the ClickHouse insert took longer than {0:?}")]
    Timeout(Duration),
}

impl From<sqlx::Error> for RelayError {
    fn from(error: sqlx::Error) -> Self {
        RelayError::Store(error.into())
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayStep {
    /// Copied this many events (0: nothing was waiting).
    Copied(usize),
    /// Another relay holds the cursor.
    Busy,
}

#[derive(Clone)]
pub struct Relay {
    db: Db,
    sink: ClickHouseSink,
    settings: RelaySettings,
}

/// A batch row of the ledger: tenant, period, position, and its events side by side.
type BatchRow = (
    uuid::Uuid,
    DateTime<Utc>,
    i64,
    i64,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<DateTime<Utc>>,
);

impl Relay {
    pub fn new(db: Db, sink: ClickHouseSink, settings: RelaySettings) -> Self {
        Self { db, sink, settings }
    }

    /// Copies one batch, if there is one and no other relay is at work.
    pub async fn step(&self) -> Result<RelayStep, RelayError> {
        let mut tx = self.db.system_tx("usage relay").await?;
        let timeout = self.settings.timeout;
        Db::bound(&mut tx, timeout).await?;
        let cursor: Option<(i64, i64)> = sqlx::query_as(
            "SELECT ledger_xid, ledger_seq FROM usage_relay_cursor FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((xid, seq)) = cursor else {
            return Ok(RelayStep::Busy);
        };
        // Only rows whose transaction is older than every transaction still running:
        // nothing can commit below that line any more, so the cursor never passes a
        // row that is yet to appear. Taken once, then used as the index scan's bound.
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *tx)
                .await?;
        // Whole batches in ledger order, until they hold the step's events (at least
        // one batch, however big).
        let rows: Vec<BatchRow> = sqlx::query_as(
            "SELECT tenant_id, period_start, ledger_xid, ledger_seq, event_ids, metrics, \
                    event_values::text[], event_times \
             FROM ( \
                 SELECT *, sum(events) OVER (ORDER BY ledger_xid, ledger_seq) - events AS before \
                 FROM ( \
                     SELECT * FROM usage_batches \
                     WHERE (ledger_xid, ledger_seq) > ($1, $2) AND ledger_xid < $3 \
                     ORDER BY ledger_xid, ledger_seq LIMIT $4 \
                 ) waiting \
             ) counted \
             WHERE before < $4 \
             ORDER BY ledger_xid, ledger_seq",
        )
        .bind(xid)
        .bind(seq)
        .bind(horizon)
        .bind(i64::from(self.settings.batch_size))
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(RelayStep::Copied(0));
        };
        let last = LedgerPosition {
            xid: last.2,
            seq: last.3,
        };
        let mut usage_rows = Vec::new();
        for (tenant, period_start, xid, seq, ids, metrics, values, times) in rows {
            let period_start = to_clickhouse_time(period_start);
            for (((event_id, metric), value), time) in
                ids.into_iter().zip(metrics).zip(values).zip(times)
            {
                usage_rows.push(UsageRow {
                    tenant_id: tenant,
                    metric,
                    event_id,
                    value: parse_u64(&value)?,
                    event_time: to_clickhouse_time(time),
                    period_start,
                    ledger_xid: u64::try_from(xid).unwrap_or_default(),
                    ledger_seq: u64::try_from(seq).unwrap_or_default(),
                });
            }
        }
        tokio::time::timeout(timeout, self.sink.insert_usage(&usage_rows))
            .await
            .map_err(|_| RelayError::Timeout(timeout))??;
        sqlx::query(
            "UPDATE usage_relay_cursor SET ledger_xid = $1, ledger_seq = $2, updated_at = now()",
        )
        .bind(last.xid)
        .bind(last.seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!("usage_relay_events_total").increment(usage_rows.len() as u64);
        Ok(RelayStep::Copied(usage_rows.len()))
    }

    /// How far the relay is behind: the age of the first event past the cursor, zero
    /// when none waits. It grows while relaying is stuck (ClickHouse down, a hung
    /// holder) and while a long transaction anywhere in the Postgres cluster holds the
    /// horizon back: the alert on it covers both.
    pub async fn lag(&self) -> Result<Duration, StoreError> {
        let mut tx = self.db.system_tx("usage relay lag").await?;
        Db::bound(&mut tx, self.settings.timeout).await?;
        let seconds: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM now() - ( \
                 SELECT ingested_at FROM usage_batches \
                 WHERE (ledger_xid, ledger_seq) > \
                       (SELECT ledger_xid, ledger_seq FROM usage_relay_cursor) \
                 ORDER BY ledger_xid, ledger_seq LIMIT 1))::float8, 0)",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Duration::from_secs_f64(seconds.max(0.0)))
    }

    /// Relays until `stop` turns true, backing off while a dependency fails. Between
    /// batches it measures its lag, at most once a second.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_lag: Option<std::time::Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            if last_lag.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
                last_lag = Some(std::time::Instant::now());
                match self.lag().await {
                    Ok(lag) => metrics::gauge!("usage_relay_lag_seconds").set(lag.as_secs_f64()),
                    Err(error) => tracing::debug!(%error, "usage relay lag not measured"),
                }
            }
            let pause = match self.step().await {
                Ok(RelayStep::Copied(n)) if n >= self.settings.batch_size as usize => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.settings.idle_wait
                }
                Err(error) => {
                    metrics::counter!("usage_relay_errors_total").increment(1);
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "usage relay failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Relays until nothing is left below the horizon; for tests and shutdown.
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            match self.step().await? {
                RelayStep::Copied(0) => return Ok(total),
                RelayStep::Copied(n) => total += n,
                RelayStep::Busy => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Where the relay has got to: ClickHouse holds every event at or below this position.
pub async fn relay_position(conn: &mut sqlx::PgConnection) -> Result<LedgerPosition, StoreError> {
    let (xid, seq): (i64, i64) =
        sqlx::query_as("SELECT ledger_xid, ledger_seq FROM usage_relay_cursor")
            .fetch_one(conn)
            .await?;
    Ok(LedgerPosition { xid, seq })
}
