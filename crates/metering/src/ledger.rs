//! The ingest transaction: events and quota counters change together or not at all.
//!
//! Per tenant and period, the counter rows are locked first, so concurrent batches for
//! one tenant queue behind each other and a hard limit is checked against the exact
//! current total; different tenants never wait for each other.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saas_core::{BillingPeriod, Metric, TenantId, TenantState};
use sqlx::PgConnection;
use tenancy::plans::MetricTerms;
use tenancy::{Db, StoreError};

use webhooks::events::UsageThresholdReached;

use crate::event::UsageEvent;
use crate::quota::{self, QuotaError};

/// What a tenant's plan allows, read in the ingest transaction.
#[derive(Debug, Clone)]
pub struct TenantTerms {
    pub state: TenantState,
    pub plan_code: String,
    pub period: BillingPeriod,
    pub metrics: BTreeMap<Metric, MetricTerms>,
}

/// Usage of one metric in the current period, after the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricStatus {
    pub used: u64,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct IngestOutcome {
    pub accepted: u64,
    /// Events whose id was already metered (earlier, concurrently, or in this batch).
    pub duplicates: u64,
    pub period: BillingPeriod,
    pub usage: BTreeMap<Metric, MetricStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("tenant is {0}")]
    NotServing(TenantState),
    #[error("quota exceeded for {metric}: {source}")]
    QuotaExceeded {
        metric: Metric,
        limit: u64,
        used: u64,
        retry_after_secs: u64,
        #[source]
        source: QuotaError,
    },
    #[error("event limit reached for {metric}: {limit} events per period")]
    EventLimit {
        metric: Metric,
        limit: u64,
        retry_after_secs: u64,
    },
    #[error("the period's {0} usage would exceed 2^64 - 1")]
    Overflow(Metric),
    /// The period was closed for invoicing while the batch was on its way. [`ingest`]
    /// then meters it in the next period; only if that one is closed too (no clock is
    /// that far off) does the caller see this: sending it again meters it anew.
    #[error("the billing period starting {} was closed while the batch was metered", .0.start)]
    PeriodClosed(BillingPeriod),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for IngestError {
    fn from(error: sqlx::Error) -> Self {
        IngestError::Store(error.into())
    }
}

/// Reads the tenant's state, plan terms and current period.
pub async fn tenant_terms(
    conn: &mut PgConnection,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> Result<TenantTerms, StoreError> {
    let (tenant_row, metrics) = tenancy::tenants::get_with_terms(conn, tenant).await?;
    Ok(TenantTerms {
        state: tenant_row.state,
        plan_code: tenant_row.plan_code.clone(),
        period: tenant_row.period_at(now),
        metrics,
    })
}

/// Meters a validated batch for `tenant`: all of it, or (on any refusal) none of it.
pub async fn ingest(
    db: &Db,
    tenant: TenantId,
    events: &[UsageEvent],
    in_batch_duplicates: u64,
    now: DateTime<Utc>,
) -> Result<IngestOutcome, IngestError> {
    // Counters are locked in metric order, so concurrent batches of a tenant queue
    // rather than deadlock; should Postgres still pick this batch as a deadlock victim,
    // nothing of it was kept, and it is simply run again.
    let (mut attempt, mut now) = (0, now);
    loop {
        match ingest_once(db, tenant, events, in_batch_duplicates, now).await {
            Err(IngestError::Store(StoreError::Database(error)))
                if is_deadlock(&error) && attempt < 3 =>
            {
                attempt += 1;
                metrics::counter!("usage_ingest_deadlock_retries_total").increment(1);
            }
            // Its period was closed for invoicing meanwhile: the batch goes into the
            // next one, as it would have had it arrived a moment later.
            Err(IngestError::PeriodClosed(period)) if attempt < 3 => {
                attempt += 1;
                now = now.max(period.end);
                metrics::counter!("usage_ingest_period_closed_total").increment(1);
            }
            other => return other,
        }
    }
}

fn is_deadlock(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

async fn ingest_once(
    db: &Db,
    tenant: TenantId,
    events: &[UsageEvent],
    in_batch_duplicates: u64,
    now: DateTime<Utc>,
) -> Result<IngestOutcome, IngestError> {
    // Holds the tenant's ingest lock shared: a run closing the period waits for it.
    let mut tx = db.ingest_tx(tenant).await?;
    let terms = tenant_terms(&mut tx, tenant, now).await?;
    if !terms.state.serves_metered_calls() {
        return Err(IngestError::NotServing(terms.state));
    }
    let period = terms.period;
    let written = write_events(&mut tx, tenant, period.start, events)
        .await?
        .ok_or(IngestError::PeriodClosed(period))?;

    let mut usage = BTreeMap::new();
    let mut alerts = Vec::new();
    for (metric, metric_terms) in &terms.metrics {
        // The counter already holds the batch (as an unbounded numeric); refusing here
        // rolls both back, so no total past the limit or past 2^64 - 1 is ever committed.
        let counter = written.totals.get(metric).copied().unwrap_or_default();
        let (total, added) = (counter.used, counter.added);
        quota::admit_events(
            metric_terms,
            counter.events - counter.added_events,
            counter.added_events,
        )
        .map_err(|_| IngestError::EventLimit {
            metric: *metric,
            limit: metric_terms.event_limit,
            retry_after_secs: period.seconds_left(now),
        })?;
        let before = u64::try_from(total - added).map_err(|_| IngestError::Overflow(*metric))?;
        let added = u64::try_from(added).map_err(|_| IngestError::Overflow(*metric))?;
        let after = quota::admit(metric_terms, before, added).map_err(|source| match source {
            QuotaError::Overflow => IngestError::Overflow(*metric),
            QuotaError::Exceeded { limit, used, .. } => IngestError::QuotaExceeded {
                metric: *metric,
                limit,
                used,
                retry_after_secs: period.seconds_left(now),
                source,
            },
        })?;
        if let Some(alert_quota) = quota::alert_quota(metric_terms) {
            for threshold in quota::crossed_thresholds(alert_quota, before, after) {
                alerts.push((*metric, threshold, after, alert_quota));
            }
        }
        usage.insert(
            *metric,
            MetricStatus {
                used: after,
                limit: metric_terms.limit,
                remaining: quota::remaining(metric_terms, after),
            },
        );
    }
    record_alerts(&mut tx, tenant, period, &alerts).await?;
    tx.commit().await?;

    let accepted = written.inserted;
    metrics::counter!("usage_events_accepted_total").increment(accepted);
    let duplicates = (events.len() as u64 - accepted) + in_batch_duplicates;
    metrics::counter!("usage_events_duplicate_total").increment(duplicates);
    Ok(IngestOutcome {
        accepted,
        duplicates,
        period,
        usage,
    })
}

/// What one batch wrote: how many events were new, and per metric the counter after the
/// batch and what the batch added to it.
#[derive(Debug, Default)]
struct Written {
    inserted: u64,
    totals: BTreeMap<Metric, Counter>,
}

/// One metric's counter after a batch, and the batch's share of it.
#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    used: u128,
    added: u128,
    events: u64,
    added_events: u64,
}

/// Stores the events whose ids are new for the tenant, as one batch row, and adds their
/// values to the period's counters, in one statement.
///
/// An id is new when its key is in no generation of `usage_event_ids`: older generations
/// take no more keys while this transaction runs (it holds the generation lock shared),
/// and a concurrent twin in the current one meets this one on its primary key. The
/// batch's keys are looked up in each generation's index (`= ANY`), never by reading the
/// tenant's keys, which would grow with the tenant. Keys go in in key order, so two
/// batches holding the same ids in different orders queue behind each other rather than
/// deadlock.
///
/// The counter upsert takes the row lock and adds to the latest committed value, so
/// concurrent batches of one tenant queue behind each other on it and every batch sees
/// the exact total it would make. Writes nothing, and answers `None`, when the period is
/// closed (see [`crate::periods`]): the statement starts after the transaction took the
/// ingest lock, so it sees any closing that did not wait for it.
async fn write_events(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
    events: &[UsageEvent],
) -> Result<Option<Written>, StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let metrics: Vec<&str> = events.iter().map(|e| e.metric.as_str()).collect();
    let values: Vec<String> = events.iter().map(|e| e.value.to_string()).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.time).collect();
    let keys: Vec<uuid::Uuid> = events.iter().map(|e| dedup_key(&e.id)).collect();
    // One row per metric the batch added to, or a single row of NULLs when none (every
    // event a duplicate); `open` in every row.
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "WITH open AS ( \
             SELECT NOT EXISTS (SELECT 1 FROM usage_period_closures \
                                WHERE tenant_id = $1 AND period_start = $2) AS open \
         ), clock AS ( \
             SELECT dedup_slot, queue_slot FROM usage_ledger_clock \
         ), batch AS ( \
             SELECT * FROM unnest($3::text[], $4::text[], $5::numeric[], $6::timestamptz[], $7::uuid[]) \
                 AS e(id, metric, value, time, key) \
             WHERE (SELECT open FROM open) \
         ), known AS ( \
             SELECT key FROM usage_event_ids WHERE tenant_id = $1 AND key = ANY ($7::uuid[]) \
         ), fresh AS ( \
             INSERT INTO usage_event_ids (tenant_id, key, slot) \
             SELECT $1, b.key, (SELECT dedup_slot FROM clock) FROM batch b \
             WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.key = b.key) \
             ORDER BY b.key \
             ON CONFLICT DO NOTHING \
             RETURNING key \
         ), new AS ( \
             SELECT b.* FROM batch b JOIN fresh USING (key) \
         ), stored AS ( \
             INSERT INTO usage_batches (slot, tenant_id, period_start, events, event_ids, \
                                        metrics, event_values, event_times) \
             SELECT (SELECT queue_slot FROM clock), $1, $2, count(*), array_agg(id), \
                    array_agg(metric), array_agg(value), array_agg(time) \
             FROM new HAVING count(*) > 0 \
         ), added AS ( \
             SELECT metric, sum(value) AS amount, count(*) AS events FROM new GROUP BY metric \
         ), counted AS ( \
             INSERT INTO usage_counters AS c (tenant_id, period_start, metric, used, events) \
             SELECT $1, $2, metric, amount, events FROM added ORDER BY metric \
             ON CONFLICT (tenant_id, period_start, metric) DO UPDATE \
                 SET used = c.used + EXCLUDED.used, events = c.events + EXCLUDED.events \
             RETURNING c.metric, c.used, c.events \
         ) \
         SELECT counted.metric, counted.used::text, added.amount::text, counted.events, \
                added.events, (SELECT count(*) FROM new), open.open \
         FROM open LEFT JOIN (counted JOIN added USING (metric)) ON true",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .bind(&ids)
    .bind(&metrics)
    .bind(&values)
    .bind(&times)
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    let parse = |text: &str| {
        text.parse::<u128>()
            .map_err(|_| StoreError::Corrupt(format!("not a number: {text}")))
    };
    let mut written = Written::default();
    let count = |value: i64| {
        u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative count {value}")))
    };
    for (metric, used, amount, events, added_events, inserted, open) in rows {
        if !open {
            return Ok(None);
        }
        written.inserted = count(inserted)?;
        let (Some(metric), Some(used), Some(amount), Some(events), Some(added_events)) =
            (metric, used, amount, events, added_events)
        else {
            continue; // nothing new: the row only says the period is open
        };
        written.totals.insert(
            metric.parse()?,
            Counter {
                used: parse(&used)?,
                added: parse(&amount)?,
                events: count(events)?,
                added_events: count(added_events)?,
            },
        );
    }
    Ok(Some(written))
}

/// The dedup key of an event id: the first 16 bytes of its SHA-256, as a UUID. The same
/// as the SQL function `usage_event_key`, which keyed the ids metered before there were
/// keys.
pub fn dedup_key(event_id: &str) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(event_id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(key)
}

/// Records each crossing once per tenant, period, metric and threshold, and tells the
/// tenant's webhook endpoints about the ones that are new.
async fn record_alerts(
    conn: &mut PgConnection,
    tenant: TenantId,
    period: BillingPeriod,
    alerts: &[(Metric, u8, u64, u64)],
) -> Result<(), StoreError> {
    for (metric, threshold, used, quota) in alerts {
        let recorded = sqlx::query(
            "INSERT INTO quota_alerts (tenant_id, period_start, metric, threshold_percent, used, quota) \
             VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_uuid())
        .bind(period.start)
        .bind(metric.as_str())
        .bind(i32::from(*threshold))
        .bind(used.to_string())
        .bind(quota.to_string())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if recorded == 0 {
            continue; // a concurrent batch recorded this crossing first
        }
        tracing::info!(%tenant, %metric, threshold, used, quota, "quota alert");
        webhooks::emit(
            conn,
            tenant,
            webhooks::EventData::UsageThresholdReached(UsageThresholdReached {
                metric: *metric,
                threshold_percent: *threshold,
                used: *used,
                quota: *quota,
                period_start: period.start,
                period_end: period.end,
            }),
        )
        .await?;
    }
    Ok(())
}
