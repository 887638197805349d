//! Writing usage rows to ClickHouse and summing them back, exactly.
//!
//! Events go into `usage_events`, one row each (exports and read-backs need them); their
//! sums per minute go into `usage_minutes`, one row per ledger batch and minute, which
//! totals and series read instead, so a read costs rows of minutes, not of events.
//!
//! `sum()` over UInt64 wraps silently in ClickHouse. Sums are therefore taken in two
//! halves (the high and low 32 bits of each value), each of which fits in 64 bits for up
//! to 2^32 events, and recombined here as u128.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use saas_core::{Metric, TenantId};
use serde::{Deserialize, Serialize};

use crate::clickhouse_sink::{ClickHouseSink, SinkError};

/// One event as stored in ClickHouse.
#[derive(Debug, Clone, Row, Serialize)]
pub struct UsageRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub tenant_id: uuid::Uuid,
    pub metric: String,
    pub event_id: String,
    pub value: u64,
    /// Unix seconds (ClickHouse `DateTime`).
    pub event_time: u32,
    pub period_start: u32,
    pub ledger_xid: u64,
    pub ledger_seq: u64,
}

/// One ledger batch's usage of one metric in one minute, as stored in ClickHouse.
#[derive(Debug, Clone, Row, Serialize, PartialEq, Eq)]
pub struct MinuteRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub tenant_id: uuid::Uuid,
    pub metric: String,
    pub period_start: u32,
    /// Unix seconds, a whole minute.
    pub minute: u32,
    pub ledger_xid: u64,
    pub ledger_seq: u64,
    pub events: u64,
    /// Sum of each value's high 32 bits.
    pub high: u64,
    /// Sum of each value's low 32 bits.
    pub low: u64,
}

/// The minute rows of some events: one per (tenant, metric, period, minute, ledger
/// position), in a fixed order. The same events always give the same rows, so a replay
/// writes what is already there.
pub fn minute_rows<'a>(events: impl IntoIterator<Item = &'a UsageRow>) -> Vec<MinuteRow> {
    type Key = (uuid::Uuid, String, u32, u32, u64, u64);
    let mut sums: std::collections::BTreeMap<Key, (u64, u64, u64)> = Default::default();
    for event in events {
        let key = (
            event.tenant_id,
            event.metric.clone(),
            event.period_start,
            event.event_time - event.event_time % 60,
            event.ledger_xid,
            event.ledger_seq,
        );
        let sum = sums.entry(key).or_default();
        sum.0 += 1;
        sum.1 += event.value >> 32;
        sum.2 += event.value & 0xFFFF_FFFF;
    }
    sums.into_iter()
        .map(
            |(
                (tenant_id, metric, period_start, minute, ledger_xid, ledger_seq),
                (events, high, low),
            )| {
                MinuteRow {
                    tenant_id,
                    metric,
                    period_start,
                    minute,
                    ledger_xid,
                    ledger_seq,
                    events,
                    high,
                    low,
                }
            },
        )
        .collect()
}

/// Per (tenant, billing period start), the total of each metric.
pub type PeriodTotals =
    std::collections::HashMap<(TenantId, DateTime<Utc>), std::collections::BTreeMap<Metric, u128>>;

/// One event as read back for an export.
#[derive(Debug, Clone, Row, Deserialize)]
pub struct StoredEvent {
    pub event_id: String,
    pub metric: String,
    pub value: u64,
    /// Unix seconds.
    pub event_time: u32,
}

/// A tenant's events as ClickHouse sends them (the query runs at the first `next`).
pub struct TenantEvents(clickhouse::query::RowCursor<StoredEvent>);

impl TenantEvents {
    pub async fn next(&mut self) -> Result<Option<StoredEvent>, SinkError> {
        Ok(self.0.next().await?)
    }
}

/// The ledger position up to which ClickHouse holds every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LedgerPosition {
    pub xid: i64,
    pub seq: i64,
}

#[derive(Debug, Row, Deserialize)]
struct SplitSum {
    bucket: u32,
    high: u64,
    low: u64,
}

fn recombine(high: u64, low: u64) -> u128 {
    (u128::from(high) << 32) + u128::from(low)
}

/// Seconds since the epoch as ClickHouse `DateTime`, clamped to its range.
pub fn to_clickhouse_time(time: DateTime<Utc>) -> u32 {
    u32::try_from(time.timestamp().max(0)).unwrap_or(u32::MAX)
}

/// Only rows at or below the relay cursor: those above it are read from Postgres.
const UP_TO_CURSOR: &str = "(ledger_xid < ? OR (ledger_xid = ? AND ledger_seq <= ?))";

impl ClickHouseSink {
    /// Writes events, then their minutes, one insert each, on the shard of each row's
    /// tenant; returns when every shard has acknowledged. Replaying the same events is
    /// harmless (see the schemas): both inserts write what is already there, on the
    /// same shard.
    pub async fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), SinkError> {
        let (shards, tables) = self.shards();
        let mut by_shard: Vec<Vec<&UsageRow>> = vec![Vec::new(); shards.len()];
        for row in rows {
            let tenant = TenantId::from_uuid(row.tenant_id);
            by_shard[crate::shards::shard_of(tenant, shards.len())].push(row);
        }
        let writes = shards
            .iter()
            .zip(by_shard)
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(client, rows)| async move {
                let mut insert = client.insert::<UsageRow>(tables.events).await?;
                for row in &rows {
                    insert.write(*row).await?;
                }
                insert.end().await?;
                let mut insert = client.insert::<MinuteRow>(tables.minutes).await?;
                for row in minute_rows(rows) {
                    insert.write(&row).await?;
                }
                insert.end().await?;
                Ok::<(), SinkError>(())
            });
        futures_util::future::try_join_all(writes).await?;
        Ok(())
    }

    /// Sums per time bucket (`bucket_function` is one of our fixed `toStartOf...`
    /// functions) for rows at or below `cursor`. Whole minutes are read from
    /// `usage_minutes`; only the parts of a minute at either end of the range, if the
    /// range does not start or end on one, from events.
    pub async fn bucket_sums(
        &self,
        tenant: TenantId,
        metric: Metric,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_function: &'static str,
        cursor: LedgerPosition,
    ) -> Result<Vec<(DateTime<Utc>, u128)>, SinkError> {
        let (from, to) = (to_clickhouse_time(from), to_clickhouse_time(to));
        let first_whole = from.div_ceil(60).saturating_mul(60);
        let end_whole = to - to % 60;
        let minutes = format!(
            "SELECT toUInt32({bucket_function}(minute)) AS bucket, \
                    toUInt64(sum(high)) AS high, toUInt64(sum(low)) AS low \
             FROM usage_minutes FINAL \
             WHERE tenant_id = toUUID(?) AND metric = ? \
               AND minute >= toDateTime(?) AND minute < toDateTime(?) \
               AND {UP_TO_CURSOR} \
             GROUP BY bucket"
        );
        let events = format!(
            "SELECT toUInt32({bucket_function}(event_time)) AS bucket, \
                    toUInt64(sum(intDiv(value, 4294967296))) AS high, \
                    toUInt64(sum(value % 4294967296)) AS low \
             FROM usage_events FINAL \
             WHERE tenant_id = toUUID(?) AND metric = ? \
               AND event_time >= toDateTime(?) AND event_time < toDateTime(?) \
               AND {UP_TO_CURSOR} \
             GROUP BY bucket"
        );
        let parts = if first_whole < end_whole {
            vec![
                (&minutes, first_whole, end_whole),
                (&events, from, first_whole),
                (&events, end_whole, to),
            ]
        } else {
            vec![(&events, from, to)]
        };
        let mut sums: std::collections::BTreeMap<u32, u128> = Default::default();
        for (sql, start, end) in parts.into_iter().filter(|(_, start, end)| start < end) {
            let rows = self
                .client()
                .query(sql)
                .bind(tenant.as_uuid().to_string())
                .bind(metric.as_str())
                .bind(start)
                .bind(end)
                .bind(cursor.xid)
                .bind(cursor.xid)
                .bind(cursor.seq)
                .fetch_all::<SplitSum>()
                .await?;
            for row in rows {
                *sums.entry(row.bucket).or_default() += recombine(row.high, row.low);
            }
        }
        Ok(sums
            .into_iter()
            .map(|(bucket, sum)| {
                let start = DateTime::from_timestamp(i64::from(bucket), 0).unwrap_or_default();
                (start, sum)
            })
            .collect())
    }

    /// The tenant's total per metric for one billing period, over every row in
    /// ClickHouse (for invoices, once the relay has passed the period).
    pub async fn period_totals(
        &self,
        tenant: TenantId,
        period_start: DateTime<Utc>,
    ) -> Result<Vec<(Metric, u128)>, SinkError> {
        #[derive(Row, Deserialize)]
        struct MetricSum {
            metric: String,
            high: u64,
            low: u64,
        }
        let rows = self
            .client()
            .query(
                "SELECT metric, toUInt64(sum(high)) AS high, toUInt64(sum(low)) AS low \
                 FROM usage_minutes FINAL \
                 WHERE tenant_id = toUUID(?) AND period_start = toDateTime(?) \
                 GROUP BY metric ORDER BY metric",
            )
            .bind(tenant.as_uuid().to_string())
            .bind(to_clickhouse_time(period_start))
            .fetch_all::<MetricSum>()
            .await?;
        rows.into_iter()
            .map(|row| {
                let metric = row
                    .metric
                    .parse()
                    .map_err(|e: saas_core::UnknownMetric| SinkError::Corrupt(e.to_string()))?;
                Ok((metric, recombine(row.high, row.low)))
            })
            .collect()
    }

    /// Totals per metric for many (tenant, billing period) pairs in one query, keyed by
    /// the pair as given (reconciliation reads a page of invoices at a time). Pairs
    /// without usage are absent.
    pub async fn period_totals_of(
        &self,
        periods: &[(TenantId, DateTime<Utc>)],
    ) -> Result<PeriodTotals, SinkError> {
        #[derive(Row, Deserialize)]
        struct PeriodSum {
            tenant: String,
            period: u32,
            metric: String,
            high: u64,
            low: u64,
        }
        if periods.is_empty() {
            return Ok(PeriodTotals::new());
        }
        let tenants: Vec<String> = periods
            .iter()
            .map(|(tenant, _)| tenant.as_uuid().to_string())
            .collect();
        let starts: Vec<u32> = periods
            .iter()
            .map(|(_, start)| to_clickhouse_time(*start))
            .collect();
        // The IN subqueries keep to the sorting key's index on 18.16 as on current
        // releases; the cross product they allow is narrowed to the pairs below.
        let rows = self
            .client()
            .query(
                "SELECT toString(tenant_id) AS tenant, toUInt32(period_start) AS period, metric, \
                        toUInt64(sum(high)) AS high, toUInt64(sum(low)) AS low \
                 FROM usage_minutes FINAL \
                 WHERE tenant_id IN (SELECT arrayJoin(arrayMap(t -> toUUID(t), ?))) \
                   AND toUInt32(period_start) IN (SELECT arrayJoin(?)) \
                 GROUP BY tenant_id, period_start, metric",
            )
            .bind(&tenants)
            .bind(&starts)
            .fetch_all::<PeriodSum>()
            .await?;
        let wanted: std::collections::HashMap<(String, u32), (TenantId, DateTime<Utc>)> = tenants
            .into_iter()
            .zip(starts)
            .zip(periods.iter().copied())
            .collect();
        let mut totals = PeriodTotals::new();
        for row in rows {
            let Some(pair) = wanted.get(&(row.tenant, row.period)) else {
                continue;
            };
            let metric = row
                .metric
                .parse()
                .map_err(|e: saas_core::UnknownMetric| SinkError::Corrupt(e.to_string()))?;
            totals
                .entry(*pair)
                .or_default()
                .insert(metric, recombine(row.high, row.low));
        }
        Ok(totals)
    }

    /// The values ClickHouse holds for some events of `tenant`, by event id (readiness:
    /// have the probe's events arrived, intact?).
    pub async fn values_of(
        &self,
        tenant: TenantId,
        event_ids: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, SinkError> {
        #[derive(Row, Deserialize)]
        struct IdValue {
            event_id: String,
            value: u64,
        }
        let rows = self
            .client()
            .query(
                "SELECT event_id, value FROM usage_events FINAL \
                 WHERE tenant_id = toUUID(?) AND has(?, event_id)",
            )
            .bind(tenant.as_uuid().to_string())
            .bind(event_ids)
            .fetch_all::<IdValue>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.event_id, row.value))
            .collect())
    }

    /// Every event of `tenant` in event id order (bytewise), for its GDPR export: a
    /// cursor, read as the export is written.
    pub fn tenant_events(&self, tenant: TenantId) -> Result<TenantEvents, SinkError> {
        Ok(TenantEvents(
            self.client()
                .query(
                    "SELECT event_id, metric, value, event_time FROM usage_events FINAL \
                     WHERE tenant_id = toUUID(?) ORDER BY event_id",
                )
                .bind(tenant.as_uuid().to_string())
                .fetch::<StoredEvent>()?,
        ))
    }

    /// How many minute rows of the tenant ClickHouse holds (replays counted once).
    pub async fn minute_rows(&self, tenant: TenantId) -> Result<u64, SinkError> {
        Ok(self
            .client()
            .query("SELECT count() FROM usage_minutes FINAL WHERE tenant_id = toUUID(?)")
            .bind(tenant.as_uuid().to_string())
            .fetch_one::<u64>()
            .await?)
    }

    /// How many distinct events of the tenant ClickHouse holds (replays counted once).
    pub async fn event_count(&self, tenant: TenantId) -> Result<u64, SinkError> {
        Ok(self
            .client()
            .query("SELECT count() FROM usage_events FINAL WHERE tenant_id = toUUID(?)")
            .bind(tenant.as_uuid().to_string())
            .fetch_one::<u64>()
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, value: u64, time: u32, seq: u64) -> UsageRow {
        UsageRow {
            tenant_id: uuid::Uuid::nil(),
            metric: "tokens".into(),
            event_id: id.into(),
            value,
            event_time: time,
            period_start: 0,
            ledger_xid: 7,
            ledger_seq: seq,
        }
    }

    #[test]
    fn minutes_sum_a_batch_per_minute_and_the_same_events_give_the_same_rows() {
        let events = [
            event("a", u64::MAX, 120, 1),
            event("b", 5, 179, 1),
            event("c", 1, 180, 1),
            event("d", 2, 130, 2),
        ];
        let rows = minute_rows(&events);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.minute, r.ledger_seq, r.events, recombine(r.high, r.low)))
            .collect();
        assert_eq!(
            summary,
            [
                (120, 1, 2, u128::from(u64::MAX) + 5),
                (120, 2, 1, 2),
                (180, 1, 1, 1)
            ]
        );
        let mut reversed = events.to_vec();
        reversed.reverse();
        assert_eq!(minute_rows(&reversed), rows);
    }

    #[test]
    fn split_sums_recombine_past_u64() {
        let values = [u64::MAX, u64::MAX, 5, 1 << 40];
        let high: u64 = values.iter().map(|v| v >> 32).sum();
        let low: u64 = values.iter().map(|v| v & 0xFFFF_FFFF).sum();
        let exact: u128 = values.iter().map(|v| u128::from(*v)).sum();
        assert_eq!(recombine(high, low), exact);
    }
}
