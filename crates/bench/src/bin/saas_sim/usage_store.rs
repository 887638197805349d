//! The usage as ClickHouse holds it, read with the simulator's own SQL (not the
//! service's): per tenant, period and metric, the units and the events, to compare with
//! the books, and whether any event is there twice.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Per metric: units, rows, distinct event ids.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub units: u64,
    pub rows: u64,
    pub ids: u64,
}

/// Per (tenant id, period start), per metric.
pub struct UsageStore(BTreeMap<(String, DateTime<Utc>), BTreeMap<String, Counted>>);

impl UsageStore {
    /// Reads every tenant's usage from the `database` at ClickHouse `url`. `FINAL`, as
    /// the table's engine asks of every read: a replayed batch not merged yet is one row.
    pub async fn load(url: &str, database: &str) -> anyhow::Result<UsageStore> {
        let sql = format!(
            "SELECT toString(tenant_id) AS tenant, toUInt32(period_start) AS period, metric, \
                    sum(value) AS units, count() AS rows, uniqExact(event_id) AS ids \
             FROM {database}.usage_events FINAL \
             GROUP BY tenant, period, metric FORMAT JSONEachRow"
        );
        let text = reqwest::Client::new()
            .post(url)
            .body(sql)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        // 64-bit integers come quoted or not, by server version.
        let number = |v: &Value| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_default()
        };
        let mut store = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: Value = serde_json::from_str(line)?;
            let period = DateTime::from_timestamp(number(&row["period"]) as i64, 0)
                .context("a period start")?;
            let tenant = row["tenant"].as_str().context("a tenant")?;
            let metric = row["metric"].as_str().context("a metric")?;
            store
                .entry((tenant.to_owned(), period))
                .or_insert_with(BTreeMap::new)
                .insert(
                    metric.to_owned(),
                    Counted {
                        units: number(&row["units"]),
                        rows: number(&row["rows"]),
                        ids: number(&row["ids"]),
                    },
                );
        }
        Ok(UsageStore(store))
    }

    /// What ClickHouse holds of `tenant` (its `ten_…` id) in the period from `start`.
    pub fn of(&self, tenant: &str, start: DateTime<Utc>) -> BTreeMap<String, Counted> {
        let uuid = tenant_uuid(tenant);
        self.0.get(&(uuid, start)).cloned().unwrap_or_default()
    }
}

/// `ten_<32 hex>` as ClickHouse prints the UUID.
pub fn tenant_uuid(tenant: &str) -> String {
    let hex = tenant.trim_start_matches("ten_");
    if hex.len() != 32 {
        return hex.to_owned();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
