//! Waiting for the books to settle: every ended period with usage invoiced, and every
//! invoice collected (or left open where nothing is collected).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use crate::api::{Api, As};
use crate::books::{Books, Tenant, instant};

/// Waits (up to `within` in all) until every tenant's ended periods are invoiced and
/// collected.
pub async fn wait_until_settled(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    cutoff: DateTime<Utc>,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for tenant in tenants.iter().filter(|t| !t.erased()) {
        settled_invoices(api, tenant, books, (cutoff, deadline)).await?;
    }
    Ok(())
}

/// A tenant's invoices, the current period's start, and the starts of every period that
/// ended before it.
pub struct Settled {
    pub invoices: Vec<Value>,
    pub current: Option<DateTime<Utc>>,
    pub ended: Vec<DateTime<Utc>>,
    pub cycle: chrono::TimeDelta,
}

/// The tenant's invoices of periods that started before `cutoff` (the end of the
/// traffic), once every such period that ended has one and none is still being collected
/// (or the deadline passed). Later periods keep closing while the checks run; their
/// invoices bill base fees only and are left out.
pub async fn settled_invoices(
    api: &Api,
    tenant: &Tenant,
    books: &Books,
    (cutoff, deadline): (DateTime<Utc>, Instant),
) -> anyhow::Result<Settled> {
    let first = instant(&tenant.first_period).context("the first period")?;
    loop {
        let summary = crate::checks::usage_summary(api, tenant).await?;
        let current = summary["period_start"].as_str().and_then(instant);
        let end = summary["period_end"].as_str().and_then(instant);
        let cycle = match (current, end) {
            (Some(current), Some(end)) => end - current,
            _ => chrono::TimeDelta::zero(),
        };
        let ended: Vec<DateTime<Utc>> = match (current, end) {
            (Some(current), Some(_)) if cycle > chrono::TimeDelta::zero() => {
                std::iter::successors(Some(first), |start| Some(*start + cycle))
                    .take_while(|start| *start < current && *start < cutoff)
                    .collect()
            }
            _ => Vec::new(),
        };
        let listed = api
            .call(
                "GET /v1/invoices",
                Method::GET,
                "/v1/invoices",
                As::Key(&tenant.key()),
                None,
            )
            .await?;
        let invoices: Vec<Value> = listed.body["invoices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["period_start"].as_str().and_then(instant) < Some(cutoff))
            .cloned()
            .collect();
        let invoiced: Vec<DateTime<Utc>> = invoices
            .iter()
            .filter(|i| i["kind"] == "period")
            .filter_map(|i| instant(i["period_start"].as_str()?))
            .collect();
        let waiting_for_invoice = books
            .usage_of(&tenant.tenant_id)
            .keys()
            .filter_map(|s| instant(s))
            .chain(ended.iter().copied())
            .any(|start| Some(start) != current && !invoiced.contains(&start));
        let collecting = invoices
            .iter()
            .any(|i| i["status"] == "draft" || (i["status"] == "open" && i["total"] != 0));
        if (!waiting_for_invoice && !collecting) || Instant::now() > deadline {
            return Ok(Settled {
                invoices,
                current,
                ended,
                cycle,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
