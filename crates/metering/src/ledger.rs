//! The ingest transaction: events and quota counters change together or not at all.
//!
//! Per tenant and period, the counter rows are locked first, so concurrent batches for
//! one tenant queue behind each other and a hard limit is checked against the exact
//! current total; different tenants never wait for each other.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use saas_core::{BillingPeriod, Metric, TenantId, TenantState};
use sqlx::PgConnection;
use tenancy::plans::MetricTerms;
use tenancy::{Db, StoreError};

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
    #[error("the period's {0} usage would exceed 2^64 - 1")]
    Overflow(Metric),
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
    let tenant_row = tenancy::tenants::get(conn, tenant).await?;
    let metrics = tenancy::plans::metric_terms(conn, &tenant_row.plan_code).await?;
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
    let mut tx = db.tenant_tx(tenant).await?;
    let terms = tenant_terms(&mut tx, tenant, now).await?;
    if !terms.state.serves_metered_calls() {
        return Err(IngestError::NotServing(terms.state));
    }
    let period = terms.period;
    let used_before = lock_counters(&mut tx, tenant, period.start).await?;

    let inserted = insert_new_events(&mut tx, tenant, period.start, events).await?;
    let mut adding: BTreeMap<Metric, u64> = BTreeMap::new();
    let by_id: HashMap<&str, &UsageEvent> = events.iter().map(|e| (e.id.as_str(), e)).collect();
    for id in &inserted {
        let event = by_id[id.as_str()];
        let sum = adding.entry(event.metric).or_default();
        *sum = sum
            .checked_add(event.value)
            .ok_or(IngestError::Overflow(event.metric))?;
    }

    let mut usage = BTreeMap::new();
    let mut alerts = Vec::new();
    for metric in Metric::ALL {
        let Some(metric_terms) = terms.metrics.get(&metric) else {
            continue;
        };
        let before = used_before.get(&metric).copied().unwrap_or(0);
        let add = adding.get(&metric).copied().unwrap_or(0);
        let after = quota::admit(metric_terms, before, add).map_err(|source| match source {
            QuotaError::Overflow => IngestError::Overflow(metric),
            QuotaError::Exceeded { limit, used, .. } => IngestError::QuotaExceeded {
                metric,
                limit,
                used,
                retry_after_secs: period.seconds_left(now),
                source,
            },
        })?;
        if let Some(alert_quota) = quota::alert_quota(metric_terms) {
            for threshold in quota::crossed_thresholds(alert_quota, before, after) {
                alerts.push((metric, threshold, after, alert_quota));
            }
        }
        usage.insert(
            metric,
            MetricStatus {
                used: after,
                limit: metric_terms.limit,
                remaining: quota::remaining(metric_terms, after),
            },
        );
    }

    add_to_counters(&mut tx, tenant, period.start, &adding).await?;
    record_alerts(&mut tx, tenant, period.start, &alerts).await?;
    tx.commit().await?;

    let accepted = inserted.len() as u64;
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

/// Creates the period's counters if needed and locks them; returns usage so far.
async fn lock_counters(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<BTreeMap<Metric, u64>, StoreError> {
    // DO UPDATE (not DO NOTHING) so that existing rows are locked and returned too.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO usage_counters (tenant_id, period_start, metric) \
         SELECT $1, $2, unnest($3::text[]) \
         ON CONFLICT (tenant_id, period_start, metric) DO UPDATE SET used = usage_counters.used \
         RETURNING metric, used::text",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .bind(Metric::ALL.map(Metric::as_str).to_vec())
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(metric, used)| Ok((metric.parse()?, parse_u64(&used)?)))
        .collect()
}

/// Inserts the events whose ids are new for the tenant; returns their ids.
async fn insert_new_events(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
    events: &[UsageEvent],
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let metrics: Vec<&str> = events.iter().map(|e| e.metric.as_str()).collect();
    let values: Vec<String> = events.iter().map(|e| e.value.to_string()).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.time).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO usage_events (tenant_id, event_id, metric, value, event_time, period_start) \
         SELECT $1, e.id, e.metric, e.value::numeric, e.time, $2 \
         FROM unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS e(id, metric, value, time) \
         ON CONFLICT (tenant_id, event_id) DO NOTHING \
         RETURNING event_id",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .bind(&ids)
    .bind(&metrics)
    .bind(&values)
    .bind(&times)
    .fetch_all(conn)
    .await?;
    Ok(inserted)
}

async fn add_to_counters(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
    adding: &BTreeMap<Metric, u64>,
) -> Result<(), StoreError> {
    if adding.is_empty() {
        return Ok(());
    }
    let metrics: Vec<&str> = adding.keys().map(|m| m.as_str()).collect();
    let amounts: Vec<String> = adding.values().map(u64::to_string).collect();
    sqlx::query(
        "UPDATE usage_counters c SET used = c.used + d.amount::numeric \
         FROM unnest($3::text[], $4::text[]) AS d(metric, amount) \
         WHERE c.tenant_id = $1 AND c.period_start = $2 AND c.metric = d.metric",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .bind(&metrics)
    .bind(&amounts)
    .execute(conn)
    .await?;
    Ok(())
}

async fn record_alerts(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
    alerts: &[(Metric, u8, u64, u64)],
) -> Result<(), StoreError> {
    for (metric, threshold, used, quota) in alerts {
        sqlx::query(
            "INSERT INTO quota_alerts (tenant_id, period_start, metric, threshold_percent, used, quota) \
             VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_uuid())
        .bind(period_start)
        .bind(metric.as_str())
        .bind(i32::from(*threshold))
        .bind(used.to_string())
        .bind(quota.to_string())
        .execute(&mut *conn)
        .await?;
        tracing::info!(%tenant, %metric, threshold, used, quota, "quota alert");
    }
    Ok(())
}

/// Current-period usage per metric, from the counters (exact the moment a batch is
/// acknowledged).
pub async fn period_usage(
    conn: &mut PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<BTreeMap<Metric, u64>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT metric, used::text FROM usage_counters WHERE tenant_id = $1 AND period_start = $2",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(metric, used)| Ok((metric.parse()?, parse_u64(&used)?)))
        .collect()
}

pub(crate) fn parse_u64(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("not a u64: {text:?}")))
}
