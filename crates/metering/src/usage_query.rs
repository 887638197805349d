//! Real-time usage reads: ClickHouse for everything the relay has copied, Postgres for
//! what it has not yet. The two sides are split at the relay cursor, so an event is
//! counted exactly once, and it is visible the moment its batch is acknowledged.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use saas_core::{Metric, TenantId};
use serde::{Deserialize, Serialize};
use tenancy::{Db, StoreError};

use crate::clickhouse_sink::{ClickHouseSink, SinkError};
use crate::relay::relay_position;

/// Most buckets one series may have; wider ranges need a coarser granularity.
pub const MAX_BUCKETS: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// The width of one bucket.
    pub fn step(self) -> TimeDelta {
        match self {
            Granularity::Minute => TimeDelta::minutes(1),
            Granularity::Hour => TimeDelta::hours(1),
            Granularity::Day => TimeDelta::days(1),
        }
    }

    fn clickhouse_function(self) -> &'static str {
        match self {
            Granularity::Minute => "toStartOfMinute",
            Granularity::Hour => "toStartOfHour",
            Granularity::Day => "toStartOfDay",
        }
    }

    fn postgres_unit(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// The start of the bucket that holds `time` (UTC days).
    pub fn floor(self, time: DateTime<Utc>) -> DateTime<Utc> {
        time.duration_trunc(self.step()).unwrap_or(time)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Every bucket from `from` (floored) to `to`, empty ones as zero.
    pub buckets: Vec<(DateTime<Utc>, u128)>,
    pub total: u128,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageReadError {
    #[error("the range holds more than {MAX_BUCKETS} buckets; use a coarser granularity")]
    RangeTooLarge,
    #[error("`from` must be before `to`")]
    EmptyRange,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl From<sqlx::Error> for UsageReadError {
    fn from(error: sqlx::Error) -> Self {
        UsageReadError::Store(error.into())
    }
}

/// Usage of `metric` in `[from, to)`, bucketed.
pub async fn series(
    db: &Db,
    sink: &ClickHouseSink,
    tenant: TenantId,
    metric: Metric,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
) -> Result<Series, UsageReadError> {
    if from >= to {
        return Err(UsageReadError::EmptyRange);
    }
    let first = granularity.floor(from);
    if (to - first).num_seconds() / granularity.step().num_seconds() >= MAX_BUCKETS {
        return Err(UsageReadError::RangeTooLarge);
    }

    let mut tx = db.tenant_tx(tenant).await?;
    // Cursor first: everything at or below it is in ClickHouse already.
    let cursor = relay_position(&mut tx).await?;
    let pending: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT date_trunc($6, event_time, 'UTC'), sum(value)::text FROM usage_events \
         WHERE tenant_id = $1 AND metric = $2 AND event_time >= $3 AND event_time < $4 \
           AND (ledger_xid, ledger_seq) > ($5, $7) \
         GROUP BY 1",
    )
    .bind(tenant.as_uuid())
    .bind(metric.as_str())
    .bind(from)
    .bind(to)
    .bind(cursor.xid)
    .bind(granularity.postgres_unit())
    .bind(cursor.seq)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let relayed = sink
        .bucket_sums(
            tenant,
            metric,
            from,
            to,
            granularity.clickhouse_function(),
            cursor,
        )
        .await?;

    let mut sums: BTreeMap<DateTime<Utc>, u128> = BTreeMap::new();
    for (bucket, value) in relayed {
        *sums.entry(bucket).or_default() += value;
    }
    for (bucket, value) in pending {
        let value: u128 = value
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("sum {value:?}")))?;
        *sums.entry(bucket).or_default() += value;
    }

    let mut buckets = Vec::new();
    let mut start = first;
    while start < to {
        buckets.push((start, sums.get(&start).copied().unwrap_or(0)));
        start += granularity.step();
    }
    let total = buckets.iter().map(|(_, value)| value).sum();
    Ok(Series { buckets, total })
}
