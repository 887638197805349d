//! Keeping the ledger bounded at a cost that does not grow with what arrives: nothing
//! here deletes rows one by one; whole partitions are emptied with TRUNCATE.
//!
//! * Dedup keys live in a ring of [`DEDUP_GENERATIONS`] generations. One takes new keys
//!   for a third of the dedup window; then the next one does, after being emptied, which
//!   is allowed only once every key in it was first seen a whole window ago. So an id is
//!   recognised for at least the window after it was first accepted (and at most a third
//!   longer), and at most 4/3 of a window's keys are kept.
//! * Whole events (a row per batch) live in a ring of [`QUEUE_SLOTS`] slots, one taking new events for
//!   `slot_width`. A slot not taking events, whose rows the relay has all copied, is
//!   emptied. When the relay falls behind by more than the ring, slots simply keep their
//!   rows until it catches up: nothing is dropped that is not in ClickHouse.
//!
//! Every process runs these passes; they serialise on the ledger clock's row lock and on
//! the partitions' own locks, so any number may run at once.

use std::time::Duration;

use tenancy::{Db, DbTx, StoreError, is_lock_timeout};

use crate::relay::relay_position;

/// Generations of dedup keys: one takes keys, the others are checked.
pub const DEDUP_GENERATIONS: i16 = 4;
/// Slots of whole events.
pub const QUEUE_SLOTS: i16 = 8;

/// How long the passes wait for a lock before trying again at the next pass: every
/// ingest waits while the generation changes, and readers of the ledger while a slot is
/// emptied, so neither may wait long.
const LOCK_WAIT: Duration = Duration::from_millis(500);
/// Longest a statement of a pass may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a retention transaction may sit between statements: nothing slow happens
/// there, and some hold every tenant's ingest off (a generation change), so a process
/// frozen there must let go soon.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// How long an accepted event id is recognised as a duplicate, at least.
    pub dedup_window: Duration,
    /// How long one slot takes new events.
    pub slot_width: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            // The oldest timestamp an event may carry (35 days), plus a margin for
            // clients that retry a late batch.
            dedup_window: Duration::from_secs(40 * 86_400),
            slot_width: Duration::from_secs(3_600),
        }
    }
}

impl RetentionSettings {
    /// How long one generation takes keys.
    pub fn generation_width(&self) -> Duration {
        self.dedup_window / u32::try_from(DEDUP_GENERATIONS - 1).unwrap_or(1)
    }

    /// How often the passes should run: often enough that neither ring overruns its
    /// width by much, and at most once a minute.
    pub fn pass_interval(&self) -> Duration {
        (self.generation_width().min(self.slot_width) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60))
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// A new generation began taking keys (the one it replaced was emptied).
    pub new_generation: bool,
    /// A new slot began taking events.
    pub new_slot: bool,
    /// Slots emptied because the relay had copied all their rows.
    pub slots_emptied: u32,
}

/// Runs one pass: moves the generation and the slot on when due, then empties relayed
/// slots.
pub async fn run_pass(db: &Db, settings: &RetentionSettings) -> Result<Pass, StoreError> {
    let new_generation = next_generation(db, settings).await?;
    let new_slot = next_slot(db, settings).await?;
    let slots_emptied = empty_relayed_slots(db).await?;
    if new_generation {
        metrics::counter!("usage_dedup_generations_total").increment(1);
    }
    metrics::counter!("usage_ledger_slots_emptied_total").increment(u64::from(slots_emptied));
    Ok(Pass {
        new_generation,
        new_slot,
        slots_emptied,
    })
}

async fn bounded_tx(db: &Db, purpose: &'static str) -> Result<DbTx, StoreError> {
    let mut tx = db.system_tx(purpose).await?;
    Db::bound_idle(&mut tx, STATEMENT_TIMEOUT, IDLE_TIMEOUT).await?;
    Ok(tx)
}

/// Moves key-taking to the next generation when the current one has taken keys for its
/// width and the next one holds only keys older than the window; whether it did.
async fn next_generation(db: &Db, settings: &RetentionSettings) -> Result<bool, StoreError> {
    let mut tx = bounded_tx(db, "usage dedup generation").await?;
    let width = settings.generation_width().as_secs_f64();
    let window = settings.dedup_window.as_secs_f64();
    // Locks the clock row: one process at a time decides.
    let due: Option<(i16, i16)> = sqlx::query_as(
        "SELECT c.dedup_slot, n.slot FROM usage_ledger_clock c \
         JOIN usage_dedup_slots n ON n.slot = (c.dedup_slot + 1) % $3 \
         WHERE c.dedup_started_at <= now() - make_interval(secs => $1) \
           AND (n.last_key_at IS NULL OR n.last_key_at <= now() - make_interval(secs => $2)) \
         FOR UPDATE OF c",
    )
    .bind(width)
    .bind(window)
    .bind(DEDUP_GENERATIONS)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((current, next)) = due else {
        return Ok(false);
    };
    // Waits for every ingest transaction running now and holds new ones back until this
    // commits: after it, no key can be written into the old generation.
    if !Db::lock_out_all_ingest(&mut tx, LOCK_WAIT).await? {
        tracing::info!("dedup generation change waited too long for ingest; next pass");
        return Ok(false);
    }
    // The moment from which the old generation takes no more keys. Taken now, after the
    // lock, not at the transaction's start: keys kept arriving until the lock was held.
    sqlx::query("UPDATE usage_dedup_slots SET last_key_at = clock_timestamp() WHERE slot = $1")
        .bind(current)
        .execute(&mut *tx)
        .await?;
    if !truncate(&mut tx, "usage_event_ids", next).await? {
        return Ok(false);
    }
    sqlx::query("UPDATE usage_dedup_slots SET last_key_at = NULL WHERE slot = $1")
        .bind(next)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE usage_ledger_clock SET dedup_slot = $1, dedup_started_at = clock_timestamp()",
    )
    .bind(next)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        generation_slot = next,
        "dedup keys go into a new generation"
    );
    Ok(true)
}

/// Moves event-taking to the next slot when the current one has taken events for its
/// width; whether it did. Needs no lock against ingest: a batch that read the old slot
/// may still write into it, and emptying a slot never loses such rows (see
/// [`empty_relayed_slots`]).
async fn next_slot(db: &Db, settings: &RetentionSettings) -> Result<bool, StoreError> {
    let mut tx = bounded_tx(db, "usage ledger slot").await?;
    let moved = sqlx::query(
        "UPDATE usage_ledger_clock SET queue_slot = (queue_slot + 1) % $2, \
                                       queue_started_at = now() \
         WHERE queue_started_at <= now() - make_interval(secs => $1)",
    )
    .bind(settings.slot_width.as_secs_f64())
    .bind(QUEUE_SLOTS)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(moved > 0)
}

/// Empties every slot that does not take events and whose rows are all relayed; how many
/// it emptied.
async fn empty_relayed_slots(db: &Db) -> Result<u32, StoreError> {
    let current: i16 = {
        let mut tx = bounded_tx(db, "usage ledger slot").await?;
        let slot = sqlx::query_scalar("SELECT queue_slot FROM usage_ledger_clock")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        slot
    };
    let mut emptied = 0;
    for slot in (0..QUEUE_SLOTS).filter(|slot| *slot != current) {
        if empty_if_relayed(db, slot).await? {
            emptied += 1;
        }
    }
    Ok(emptied)
}

/// Empties one slot if it holds rows and the relay has copied them all.
async fn empty_if_relayed(db: &Db, slot: i16) -> Result<bool, StoreError> {
    let mut tx = bounded_tx(db, "usage ledger slot").await?;
    // Cheap look first, without the lock that readers of the ledger would wait behind.
    let holds_rows: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM usage_batches_{slot})"
    )))
    .fetch_one(&mut *tx)
    .await?;
    if !holds_rows {
        return Ok(false);
    }
    // Under the lock no transaction can be writing into the slot, so a row past the
    // relay's position is either here now or arrives after the slot is emptied; the
    // position read next is no later than the true one, which only makes this stricter.
    let lock = format!("LOCK TABLE usage_batches_{slot} IN ACCESS EXCLUSIVE MODE");
    if !within_lock_wait(&mut tx, lock).await? {
        return Ok(false);
    }
    let position = relay_position(&mut tx).await?;
    let unrelayed: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM usage_batches_{slot} \
                        WHERE (ledger_xid, ledger_seq) > ($1, $2))"
    )))
    .bind(position.xid)
    .bind(position.seq)
    .fetch_one(&mut *tx)
    .await?;
    if unrelayed {
        return Ok(false);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "TRUNCATE usage_batches_{slot}"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(slot, "relayed ledger slot emptied");
    Ok(true)
}

/// Empties partition `slot` of `table` in `tx`, waiting at most [`LOCK_WAIT`] for its
/// lock; whether it did. When not, `tx` is aborted.
async fn truncate(tx: &mut DbTx, table: &'static str, slot: i16) -> Result<bool, StoreError> {
    within_lock_wait(tx, format!("TRUNCATE {table}_{slot}")).await
}

/// Runs `sql` (which takes a lock) in `tx`, waiting at most [`LOCK_WAIT`] for the lock;
/// whether it ran. When not, `tx` is aborted.
async fn within_lock_wait(tx: &mut DbTx, sql: String) -> Result<bool, StoreError> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(LOCK_WAIT.as_millis().to_string())
        .execute(&mut **tx)
        .await?;
    match sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut **tx)
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if is_lock_timeout(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Sets the ledger's size gauges: the batch rows waiting in it (counted: there are few,
/// a row per batch for at most a slot or two unless the relay is behind) and the bytes
/// of both tables, indexes included. Both must level off under a steady load. Dedup keys
/// are not counted (there may be billions); their bytes are the measure.
pub async fn measure_ledger(db: &Db) -> Result<(), StoreError> {
    let mut tx = bounded_tx(db, "usage ledger size").await?;
    let (rows, bytes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_batches), \
                (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint \
                 FROM pg_inherits i \
                 WHERE i.inhparent IN ('usage_batches'::regclass, 'usage_event_ids'::regclass))",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::gauge!("usage_ledger_rows").set(rows as f64);
    metrics::gauge!("usage_ledger_bytes").set(bytes as f64);
    Ok(())
}
