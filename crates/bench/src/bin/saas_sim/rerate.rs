//! An invoice worked out again from the published plan terms (`GET /v1/plans`), written
//! here from the documented rules and not with the service's rating code:
//!
//! - usage up to `included` is free; past it, the overage is priced by graduated tiers,
//!   each tier's `up_to` counted in overage units from the end of `included`;
//! - a tier's amount is `quantity × unit_amount ÷ unit_size`, rounded half up;
//! - a period invoice adds the next period's base fee (billed in advance).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::Value;

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

/// What one metric's usage costs under `terms`.
pub fn usage_amount(terms: &Terms, used: u64) -> anyhow::Result<u128> {
    let mut overage = used.saturating_sub(terms.included);
    if overage > 0 && terms.tiers.is_empty() {
        bail!("usage past the included units with no price for it");
    }
    let (mut total, mut floor) = (0u128, 0u64);
    for tier in &terms.tiers {
        if overage == 0 {
            break;
        }
        let room = tier
            .up_to
            .map_or(u64::MAX, |up_to| up_to.saturating_sub(floor));
        let quantity = overage.min(room);
        total += amount(quantity, tier.unit_amount, terms.unit_size);
        overage -= quantity;
        floor = tier.up_to.unwrap_or(u64::MAX);
    }
    Ok(total)
}

/// The total of a period invoice: the period's usage under `plan`, and the next
/// period's base fee under `next` (the same plan, unless it changed).
pub fn period_total(
    plan: &Plan,
    next: &Plan,
    usage: &BTreeMap<String, u64>,
) -> anyhow::Result<i128> {
    let mut total = i128::from(next.base_fee);
    for (metric, terms) in &plan.metrics {
        let used = usage.get(metric).copied().unwrap_or(0);
        total += i128::try_from(usage_amount(terms, used)?)?;
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
        assert_eq!(usage_amount(&terms, 170).unwrap(), 22);
        assert_eq!(usage_amount(&terms, 100).unwrap(), 0);
    }
}
