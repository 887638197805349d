//! Plan changes in a tenant's life: an upgrade to the next plan taken at once, or a
//! downgrade to the one below at the period's end, written in the tenant's books with
//! when it took effect and the usage acknowledged before it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, As, Busy};
use crate::books::{Books, MetricUsage, PlanChange, Tenant, instant, period_holding};

/// Paid plans in order of price: upgrades move right, downgrades left.
const LADDER: [&str; 3] = ["starter", "pro", "enterprise"];

/// An upgrade taken at once, or a downgrade at the period's end, to the next plan on the
/// ladder; whether it was made. One plan change per tenant in a run.
pub async fn change(api: &Api, books: &Books, tenant: &Tenant, up: bool) -> Result<bool, Busy> {
    if !tenant.live.state().changes.is_empty() {
        return Ok(false);
    }
    let Some(step) = LADDER.iter().position(|p| *p == tenant.plan) else {
        return Ok(false); // free tenants have no card to pay a paid plan with
    };
    let to = if up {
        LADDER.get(step + 1)
    } else {
        step.checked_sub(1).and_then(|s| LADDER.get(s))
    };
    let Some(to) = to else {
        return Ok(false);
    };
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let summary = api.get("GET /v1/usage/summary", &key).await?;
    let (Some(start), Some(end)) = (
        time(&summary.body["period_start"]),
        time(&summary.body["period_end"]),
    ) else {
        return Err(Busy);
    };
    // A downgrade asked just before the period ends could fall on either side of it.
    if !up && end - Utc::now() < chrono::TimeDelta::seconds(2) {
        return Ok(false);
    }
    let effective = if up { "now" } else { "period_end" };
    let asked = api
        .call_idempotent(
            "POST /v1/tenant/plan-changes",
            Method::POST,
            "/v1/tenant/plan-changes",
            As::Key(&key),
            &json!({"plan": to, "effective": effective}),
        )
        .await
        .map_err(|_| Busy)?;
    if asked.status == 409 {
        return Err(Busy);
    }
    let Some(id) = asked.body["transition"]["id"]
        .as_str()
        .filter(|_| asked.status == 202)
    else {
        books.violation(format!(
            "{}: a plan change answered {} {}",
            tenant.tenant_id, asked.status, asked.body
        ));
        return Ok(false);
    };
    let path = format!("/v1/tenant/transitions/{id}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let effective_at = loop {
        if Instant::now() > deadline {
            books.violation(format!(
                "{}: plan change {id} never took effect",
                tenant.tenant_id
            ));
            return Ok(false);
        }
        if let Ok(seen) = api
            .answered(
                "GET /v1/tenant/transitions/{id}",
                Method::GET,
                &path,
                As::Key(&key),
                None,
            )
            .await
        {
            match (seen.body["state"].as_str(), up) {
                (Some("completed"), true) => break time(&seen.body["completed_at"]),
                (Some("scheduled" | "completed"), false) => break Some(end),
                (Some("failed" | "canceled"), _) => {
                    books.violation(format!(
                        "{}: plan change {id} ended {}",
                        tenant.tenant_id, seen.body
                    ));
                    return Ok(false);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(effective_at) = effective_at else {
        return Ok(false);
    };
    // The usage of the period the change fell in, acknowledged before it: no batch is in
    // flight (the gate is held), so the books hold all of it.
    let period = period_holding(start, end - start, effective_at);
    let usage_before: MetricUsage = if up {
        books
            .usage_of(&tenant.tenant_id)
            .into_iter()
            .filter(|(s, _)| instant(s) == Some(period))
            .flat_map(|(_, usage)| usage)
            .collect()
    } else {
        MetricUsage::new()
    };
    tenant.live.state().changes.push(PlanChange {
        to: (*to).to_owned(),
        effective_at,
        at_once: up,
        usage_before,
    });
    Ok(true)
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(instant)
}
