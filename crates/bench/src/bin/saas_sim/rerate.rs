//! An invoice worked out again from the published plan terms (`GET /v1/plans`), written
//! here from the documented rules and not with the service's rating code:
//!
//! - usage up to `included` is free; past it, the overage is priced by graduated tiers,
//!   each tier's `up_to` counted in overage units from the end of `included`;
//! - a tier's amount is `quantity × unit_amount ÷ unit_size`, rounded half up;
//! - a period invoice adds the next period's base fee (billed in advance);
//! - a plan change taken at once splits the period's usage where it took effect, each
//!   part rated under its plan from its place in the period, and prorates the base fees
//!   for the time left.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::books::PlanChange;

pub const METRICS: [&str; 3] = ["queries", "tokens", "bytes"];

#[derive(Debug, Clone)]
pub struct Tier {
    pub up_to: Option<u64>,
    pub unit_amount: u64,
}

#[derive(Debug, Clone)]
pub struct Terms {
    pub included: u64,
    pub limit: Option<u64>,
    pub unit_size: u64,
    pub tiers: Vec<Tier>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub base_fee: i64,
    pub metrics: BTreeMap<String, Terms>,
}

/// The plans as the public API publishes them.
pub fn parse_plans(body: &Value) -> anyhow::Result<BTreeMap<String, Plan>> {
    let number = |value: &Value, what: &str| {
        value
            .as_u64()
            .with_context(|| format!("{what} is not a whole number: {value}"))
    };
    let mut plans = BTreeMap::new();
    for plan in body["plans"].as_array().context("no plans")? {
        let code = plan["code"].as_str().context("plan code")?.to_owned();
        let mut metrics = BTreeMap::new();
        for metric in METRICS {
            let terms = &plan["metrics"][metric];
            let tiers = terms["tiers"]
                .as_array()
                .context("tiers")?
                .iter()
                .map(|tier| {
                    Ok(Tier {
                        up_to: tier["up_to"].as_u64(),
                        unit_amount: number(&tier["unit_amount"], "unit_amount")?,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            metrics.insert(
                metric.to_owned(),
                Terms {
                    included: number(&terms["included"], "included")?,
                    limit: terms["limit"].as_u64(),
                    unit_size: number(&terms["unit_size"], "unit_size")?,
                    tiers,
                },
            );
        }
        let base_fee = plan["base_fee"].as_i64().context("base_fee")?;
        plans.insert(code, Plan { base_fee, metrics });
    }
    Ok(plans)
}

/// `quantity × unit_amount ÷ unit_size`, rounded half up.
fn amount(quantity: u64, unit_amount: u64, unit_size: u64) -> u128 {
    let numerator = u128::from(quantity) * u128::from(unit_amount);
    let size = u128::from(unit_size.max(1));
    (2 * numerator + size) / (2 * size)
}

/// What the units from `from` to `to` of one metric (counted from the period's start)
/// cost under `terms`: nothing within the included units; past them, the part in each
/// overage tier at the tier's price, each part rounded on its own. Rating a period's
/// usage in ranges, one per plan it was used under, gives each unit the price of its
/// place in the period.
pub fn range_amount(terms: &Terms, from: u64, to: u64) -> anyhow::Result<u128> {
    let over = |units: u64| units.saturating_sub(terms.included);
    let (low, high) = (over(from), over(to.max(from)));
    if high > low && terms.tiers.is_empty() {
        bail!("usage past the included units with no price for it");
    }
    let (mut total, mut floor) = (0u128, 0u64);
    for tier in &terms.tiers {
        let ceiling = tier.up_to.unwrap_or(u64::MAX);
        let quantity = high.min(ceiling).saturating_sub(low.max(floor));
        if quantity > 0 {
            total += amount(quantity, tier.unit_amount, terms.unit_size);
        }
        floor = ceiling;
    }
    Ok(total)
}

/// The total of the invoice that closes the period `[start, end)`, whose usage was
/// `used`, for a tenant that signed up on `first` and changed plans as `changes` say:
///
/// - the next period's base fee, under the plan in effect at `end` (a downgrade at the
///   period's end counts);
/// - the usage, in ranges: up to each change taken at once under the plan before it,
///   the rest under the plan after;
/// - for each change taken at once in the period, the old base fee for the time left
///   credited and the new one charged (`fee × seconds left ÷ seconds in the period`,
///   rounded half up, whole seconds).
pub fn period_invoice_total(
    plans: &BTreeMap<String, Plan>,
    first: &str,
    changes: &[PlanChange],
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    used: &BTreeMap<String, u64>,
) -> anyhow::Result<i128> {
    let plan = |code: &str| plans.get(code).with_context(|| format!("plan {code}"));
    let taken_in = |c: &&PlanChange| c.at_once && c.effective_at >= start && c.effective_at < end;
    let in_effect = |at: DateTime<Utc>| {
        changes
            .iter()
            .rfind(|c| c.effective_at <= at)
            .map_or(first, |c| c.to.as_str())
    };
    let mut total = i128::from(plan(in_effect(end))?.base_fee);
    // The plan the period started on: before any change taken at once in it.
    let before = changes
        .iter()
        .rfind(|c| c.effective_at <= start && !taken_in(c))
        .map_or(first, |c| c.to.as_str());
    let mut current = plan(before)?;
    let mut from = BTreeMap::new();
    let seconds = |delta: chrono::TimeDelta| u64::try_from(delta.num_seconds()).unwrap_or(0);
    let length = seconds(end - start);
    for change in changes.iter().filter(|c| taken_in(c)) {
        total += usage_between(current, &from, &change.usage_before)?;
        from.clone_from(&change.usage_before);
        let to = plan(&change.to)?;
        let left = seconds(end - change.effective_at);
        total -= i128::try_from(amount(left, current.base_fee.unsigned_abs(), length))?;
        total += i128::try_from(amount(left, to.base_fee.unsigned_abs(), length))?;
        current = to;
    }
    total += usage_between(current, &from, used)?;
    Ok(total)
}

/// Every metric's units from `from` to `to` under `plan`.
fn usage_between(
    plan: &Plan,
    from: &BTreeMap<String, u64>,
    to: &BTreeMap<String, u64>,
) -> anyhow::Result<i128> {
    let mut total = 0;
    for (metric, terms) in &plan.metrics {
        let units = |usage: &BTreeMap<String, u64>| usage.get(metric).copied().unwrap_or(0);
        total += i128::try_from(range_amount(terms, units(from), units(to))?)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_up_and_graduated() {
        assert_eq!(amount(1500, 1, 1000), 2);
        assert_eq!(amount(1499, 1, 1000), 1);
        let terms = Terms {
            included: 100,
            limit: None,
            unit_size: 10,
            tiers: vec![
                Tier {
                    up_to: Some(50),
                    unit_amount: 4,
                },
                Tier {
                    up_to: None,
                    unit_amount: 1,
                },
            ],
        };
        // 70 over: 50 at 4 per 10 (20), then 20 at 1 per 10 (2).
        assert_eq!(range_amount(&terms, 0, 170).unwrap(), 22);
        assert_eq!(range_amount(&terms, 0, 100).unwrap(), 0);
        // Split at 130: 30 over at 4 per 10 (12); then 20 more at 4 (8) and 20 at 1 (2).
        assert_eq!(range_amount(&terms, 0, 130).unwrap(), 12);
        assert_eq!(range_amount(&terms, 130, 170).unwrap(), 10);
    }
}
