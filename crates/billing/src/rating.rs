//! Rating: usage and plan terms in, invoice lines out.
//!
//! Per metric, usage up to the plan's included units is one line at price zero; usage
//! past it (the overage) is split across the plan's graduated tiers, one line per tier
//! that has any. The quantities of a metric's lines therefore add up to its usage
//! exactly, which is what reconciliation checks.
//!
//! Rounding rule (the only one): a line's amount is
//! `quantity × unit_amount ÷ unit_size`, rounded half up to a whole minor unit.
//! The invoice total is the sum of its line amounts, so it never differs from its lines.

use std::collections::BTreeMap;

use saas_core::{Currency, Metric};
use serde::Serialize;
use tenancy::plans::{MetricTerms, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    /// Usage covered by the base fee.
    Included,
    /// Usage past the included units, priced by one tier.
    Overage,
    /// Part of a base fee paid in advance, credited (negative) or charged again under
    /// another plan, for the rest of a period in which an upgrade took effect.
    Proration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub metric: Option<Metric>,
    /// Which overage tier (0-based) priced this line.
    pub tier: Option<usize>,
    pub quantity: u64,
    /// Minor units per `unit_size` units.
    pub unit_amount: i64,
    pub unit_size: u64,
    /// Minor units.
    pub amount: i64,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RatedInvoice {
    pub currency: Currency,
    pub lines: Vec<InvoiceLine>,
    /// Minor units; the sum of the lines' amounts.
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error("plan {plan}: {metric} has no price for usage past its included units")]
    NoOveragePrice { plan: String, metric: Metric },
    #[error("plan {plan}: {metric} tiers are invalid: {reason}")]
    InvalidTiers {
        plan: String,
        metric: Metric,
        reason: &'static str,
    },
    #[error("the invoice amount does not fit in 64 bits")]
    AmountOverflow,
}

/// `quantity × unit_amount ÷ unit_size`, rounded half up.
pub fn line_amount(quantity: u64, unit_amount: i64, unit_size: u64) -> Result<i64, RatingError> {
    let unit_amount = u128::try_from(unit_amount).map_err(|_| RatingError::AmountOverflow)?;
    let size = u128::from(unit_size.max(1));
    let exact_numerator = u128::from(quantity)
        .checked_mul(unit_amount)
        .ok_or(RatingError::AmountOverflow)?;
    let (whole, rest) = (exact_numerator / size, exact_numerator % size);
    // Half up: round up when the remainder is at least half of `size`. Written as
    // `rest >= size - rest` so that no intermediate value can overflow.
    let rounded = whole + u128::from(rest >= size - rest);
    i64::try_from(rounded).map_err(|_| RatingError::AmountOverflow)
}

/// Rates `usage` (per metric, for one billing period) under `plan`, with the plan's base
/// fee: one plan, one period.
pub fn rate(plan: &Plan, usage: &BTreeMap<Metric, u64>) -> Result<RatedInvoice, RatingError> {
    let mut lines = vec![base_fee(plan, format!("{} plan", plan.name))];
    lines.extend(rate_usage(plan, usage)?);
    total(plan.currency.clone(), lines)
}

/// An invoice of `lines`, its total their sum.
pub fn total(currency: Currency, lines: Vec<InvoiceLine>) -> Result<RatedInvoice, RatingError> {
    let total = lines
        .iter()
        .try_fold(0i64, |sum, line| sum.checked_add(line.amount))
        .ok_or(RatingError::AmountOverflow)?;
    Ok(RatedInvoice {
        currency,
        lines,
        total,
    })
}

/// The plan's base fee for one period, as one line.
pub fn base_fee(plan: &Plan, description: String) -> InvoiceLine {
    InvoiceLine {
        kind: LineKind::BaseFee,
        metric: None,
        tier: None,
        quantity: 1,
        unit_amount: plan.base_fee,
        unit_size: 1,
        amount: plan.base_fee,
        description,
    }
}

/// The usage lines of one period under `plan`: per metric, the included part, then one
/// line per overage tier used.
pub fn rate_usage(
    plan: &Plan,
    usage: &BTreeMap<Metric, u64>,
) -> Result<Vec<InvoiceLine>, RatingError> {
    let mut lines = Vec::new();
    for (metric, terms) in &plan.metrics {
        let used = usage.get(metric).copied().unwrap_or(0);
        rate_metric(plan, *metric, terms, (0, used), "", &mut lines)?;
    }
    Ok(lines)
}

/// One part of a period's usage, used under one plan: per metric, the period's usage
/// before the part began (`from`) and at its end (`to`).
pub struct UsageSegment<'a> {
    pub plan: &'a Plan,
    pub from: &'a BTreeMap<Metric, u64>,
    pub to: &'a BTreeMap<Metric, u64>,
    /// Tells the segment apart on its lines (" on Starter plan until ..."), or empty.
    pub label: String,
}

/// The usage lines of a period used under several plans in turn: each segment's units
/// priced by its own plan at their place in the period (see `rate_metric`).
pub fn rate_segments(segments: &[UsageSegment<'_>]) -> Result<Vec<InvoiceLine>, RatingError> {
    let mut lines = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        for (metric, terms) in &segment.plan.metrics {
            let from = segment.from.get(metric).copied().unwrap_or(0);
            let to = segment.to.get(metric).copied().unwrap_or(0).max(from);
            if from == to && index > 0 {
                continue; // nothing used under this plan
            }
            rate_metric(
                segment.plan,
                *metric,
                terms,
                (from, to),
                &segment.label,
                &mut lines,
            )?;
        }
    }
    Ok(lines)
}

/// An upgrade from `from` to `to` with `remaining` of a period of `length` left (both in
/// seconds): the unused part of the old base fee credited, the new one charged for the
/// same time. Each is `fee × remaining ÷ length`, rounded half up like every line.
pub fn proration(
    from: &Plan,
    to: &Plan,
    remaining: u64,
    length: u64,
    when: &str,
) -> Result<[InvoiceLine; 2], RatingError> {
    let part = |plan: &Plan, sign: i64, what: &str| -> Result<InvoiceLine, RatingError> {
        let amount = line_amount(remaining, plan.base_fee, length)?;
        Ok(InvoiceLine {
            kind: LineKind::Proration,
            metric: None,
            tier: None,
            quantity: remaining,
            unit_amount: sign * plan.base_fee,
            unit_size: length.max(1),
            amount: sign * amount,
            description: format!("{what} time on {} plan after {when}", plan.name),
        })
    };
    Ok([part(from, -1, "Unused")?, part(to, 1, "Remaining")?])
}

/// The lines of the units from `from` to `to` (counted from the period's start) of one
/// metric under `plan`: the part of them within the included units, then the part within
/// each overage tier. Rating a period's usage in ranges, one per plan it was used under,
/// gives each unit the price of its place in the period, so that the included units are
/// used once however often the plan changes.
fn rate_metric(
    plan: &Plan,
    metric: Metric,
    terms: &MetricTerms,
    (from, to): (u64, u64),
    label: &str,
    lines: &mut Vec<InvoiceLine>,
) -> Result<(), RatingError> {
    validate_tiers(plan, metric, terms)?;
    let overlap = |lower: u64, upper: u64| to.min(upper).saturating_sub(from.max(lower));
    let included = overlap(0, terms.included);
    if from == 0 || included > 0 {
        lines.push(InvoiceLine {
            kind: LineKind::Included,
            metric: Some(metric),
            tier: None,
            quantity: included,
            unit_amount: 0,
            unit_size: terms.unit_size,
            amount: 0,
            description: format!("{metric}, included{label}"),
        });
    }
    let mut lower = terms.included; // where the tier starts, in units of the period
    for (index, tier) in terms.tiers.iter().enumerate() {
        let upper = tier
            .up_to
            .map_or(u64::MAX, |up_to| terms.included.saturating_add(up_to));
        let quantity = overlap(lower, upper);
        if quantity > 0 {
            lines.push(InvoiceLine {
                kind: LineKind::Overage,
                metric: Some(metric),
                tier: Some(index),
                quantity,
                unit_amount: tier.unit_amount,
                unit_size: terms.unit_size,
                amount: line_amount(quantity, tier.unit_amount, terms.unit_size)?,
                description: format!(
                    "{metric} past the included {}, tier {} ({} per {}){label}",
                    terms.included,
                    index + 1,
                    tier.unit_amount,
                    terms.unit_size
                ),
            });
        }
        lower = upper;
    }
    if to > lower {
        return Err(RatingError::NoOveragePrice {
            plan: plan.code.clone(),
            metric,
        });
    }
    Ok(())
}

fn validate_tiers(plan: &Plan, metric: Metric, terms: &MetricTerms) -> Result<(), RatingError> {
    let invalid = |reason| RatingError::InvalidTiers {
        plan: plan.code.clone(),
        metric,
        reason,
    };
    let mut previous = 0u64;
    for (index, tier) in terms.tiers.iter().enumerate() {
        if tier.unit_amount < 0 {
            return Err(invalid("a unit amount is negative"));
        }
        match tier.up_to {
            Some(up_to) if up_to <= previous => return Err(invalid("bounds must increase")),
            Some(up_to) => previous = up_to,
            None if index + 1 != terms.tiers.len() => {
                return Err(invalid("only the last tier may be unbounded"));
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tenancy::plans::PriceTier;

    use super::*;

    fn plan(base_fee: i64, metrics: Vec<(Metric, MetricTerms)>) -> Plan {
        Plan {
            code: "test".into(),
            name: "Test".into(),
            currency: Currency::new("usd").unwrap(),
            base_fee,
            rank: 0,
            metrics: metrics.into_iter().collect(),
        }
    }

    fn terms(included: u64, unit_size: u64, tiers: &[(Option<u64>, i64)]) -> MetricTerms {
        MetricTerms {
            included,
            limit: None,
            unit_size,
            tiers: tiers
                .iter()
                .map(|&(up_to, unit_amount)| PriceTier { up_to, unit_amount })
                .collect(),
            event_limit: u64::MAX,
        }
    }

    #[test]
    fn rounding_is_half_up_to_whole_minor_units() {
        assert_eq!(line_amount(1500, 1, 1000), Ok(2)); // 1.5 -> 2
        assert_eq!(line_amount(1499, 1, 1000), Ok(1)); // 1.499 -> 1
        assert_eq!(line_amount(1, 1, 3), Ok(0)); // 0.33 -> 0
        assert_eq!(line_amount(2, 1, 3), Ok(1)); // 0.67 -> 1
        assert_eq!(line_amount(0, 50, 1000), Ok(0));
        assert_eq!(line_amount(u64::MAX, 1, u64::MAX), Ok(1));
        assert_eq!(
            line_amount(u64::MAX, i64::MAX, 1),
            Err(RatingError::AmountOverflow)
        );
    }

    #[test]
    fn a_worked_example_matches_by_hand() {
        // Base 19,900. Queries: 1,000,000 included; overage per 1,000 at 40 up to
        // 9,000,000 overage units, then 25.
        let pro = plan(
            19_900,
            vec![(
                Metric::Queries,
                terms(1_000_000, 1000, &[(Some(9_000_000), 40), (None, 25)]),
            )],
        );
        let usage = BTreeMap::from([(Metric::Queries, 12_345_678)]);
        let invoice = rate(&pro, &usage).unwrap();
        // Overage 11,345,678: 9,000,000 at 40/1000 = 360,000; 2,345,678 at 25/1000 =
        // 58,641.95 -> 58,642.
        let amounts: Vec<i64> = invoice.lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, [19_900, 0, 360_000, 58_642]);
        assert_eq!(invoice.total, 19_900 + 360_000 + 58_642);
        let quantities: u64 = invoice.lines[1..].iter().map(|l| l.quantity).sum();
        assert_eq!(quantities, 12_345_678);
    }

    #[test]
    fn misconfigured_tiers_and_unpriced_overage_are_errors() {
        let bad = |tiers: &[(Option<u64>, i64)]| {
            let p = plan(0, vec![(Metric::Tokens, terms(0, 1, tiers))]);
            rate(&p, &BTreeMap::from([(Metric::Tokens, 10)]))
        };
        assert!(matches!(
            bad(&[(Some(5), 1), (Some(5), 1)]),
            Err(RatingError::InvalidTiers { .. })
        ));
        assert!(matches!(
            bad(&[(None, 1), (Some(5), 1)]),
            Err(RatingError::InvalidTiers { .. })
        ));
        assert!(matches!(
            bad(&[(Some(5), -1)]),
            Err(RatingError::InvalidTiers { .. })
        ));
        assert!(matches!(
            bad(&[(Some(5), 1)]),
            Err(RatingError::NoOveragePrice { .. })
        ));
        assert!(matches!(bad(&[]), Err(RatingError::NoOveragePrice { .. })));
        // Within the included units no price is needed.
        let free = plan(0, vec![(Metric::Tokens, terms(100, 1, &[]))]);
        assert_eq!(
            rate(&free, &BTreeMap::from([(Metric::Tokens, 100)]))
                .unwrap()
                .total,
            0
        );
    }

    /// An independent reference: hands out overage one unit at a time to the first tier
    /// whose bound it is within, then rounds with a remainder test instead of a bias.
    #[test]
    fn usage_in_segments_is_priced_by_each_plan_and_uses_the_included_units_once() {
        let cheap = plan(0, vec![(Metric::Tokens, terms(100, 1, &[(None, 10)]))]);
        let dear = plan(0, vec![(Metric::Tokens, terms(1_000, 1, &[(None, 1)]))]);
        let at = |n: u64| BTreeMap::from([(Metric::Tokens, n)]);
        let (zero, mid, end) = (at(0), at(150), at(1_200));
        let lines = rate_segments(&[
            UsageSegment {
                plan: &cheap,
                from: &zero,
                to: &mid,
                label: String::new(),
            },
            UsageSegment {
                plan: &dear,
                from: &mid,
                to: &end,
                label: " later".into(),
            },
        ])
        .unwrap();
        let quantities: u64 = lines.iter().map(|l| l.quantity).sum();
        assert_eq!(quantities, 1_200, "every unit once");
        // 50 past the cheap plan's 100 at 10; then units 150..1000 within the dear
        // plan's included 1000, and 200 past it at 1.
        let amounts: Vec<(u64, i64)> = lines.iter().map(|l| (l.quantity, l.amount)).collect();
        assert_eq!(amounts, [(100, 0), (50, 500), (850, 0), (200, 200)]);
    }

    #[test]
    fn a_plan_without_overage_prices_after_a_change_rates_what_was_used_before() {
        let starter = plan(0, vec![(Metric::Tokens, terms(100, 1, &[(None, 10)]))]);
        let free = plan(0, vec![(Metric::Tokens, terms(50, 1, &[]))]);
        let at = |n: u64| BTreeMap::from([(Metric::Tokens, n)]);
        let (zero, used) = (at(0), at(400));
        let lines = rate_segments(&[
            UsageSegment {
                plan: &starter,
                from: &zero,
                to: &used,
                label: String::new(),
            },
            UsageSegment {
                plan: &free,
                from: &used,
                to: &used,
                label: String::new(),
            },
        ])
        .unwrap();
        assert_eq!(lines.iter().map(|l| l.amount).sum::<i64>(), 3_000);
        // More usage under the plan without a price is an error, not a free ride.
        let more = at(401);
        assert!(
            rate_segments(&[UsageSegment {
                plan: &free,
                from: &used,
                to: &more,
                label: String::new()
            }])
            .is_err()
        );
    }

    fn oracle(plan: &Plan, usage: &BTreeMap<Metric, u64>) -> Option<(i64, BTreeMap<Metric, u64>)> {
        let mut total = plan.base_fee;
        let mut quantities = BTreeMap::new();
        for (metric, terms) in &plan.metrics {
            let used = usage.get(metric).copied().unwrap_or(0);
            let mut per_tier = vec![0u64; terms.tiers.len()];
            for unit in 1..=used.saturating_sub(terms.included) {
                let tier = terms
                    .tiers
                    .iter()
                    .position(|t| t.up_to.is_none_or(|up| unit <= up))?;
                per_tier[tier] += 1;
            }
            for (tier, quantity) in terms.tiers.iter().zip(&per_tier) {
                let numerator = u128::from(*quantity) * tier.unit_amount as u128;
                let size = u128::from(terms.unit_size);
                let mut amount = numerator / size;
                if (numerator % size) * 2 >= size {
                    amount += 1;
                }
                total += amount as i64;
            }
            quantities.insert(
                *metric,
                used.min(terms.included) + per_tier.iter().sum::<u64>(),
            );
        }
        Some((total, quantities))
    }

    fn random_terms(rng: &mut StdRng) -> MetricTerms {
        let mut tiers = Vec::new();
        let mut bound = 0u64;
        for _ in 0..rng.random_range(0..4) {
            bound += rng.random_range(1..2_000);
            tiers.push((Some(bound), rng.random_range(0..500)));
        }
        if rng.random_bool(0.8) {
            tiers.push((None, rng.random_range(0..500)));
        }
        terms(
            rng.random_range(0..3_000),
            rng.random_range(1..2_000),
            &tiers,
        )
    }

    #[test]
    fn rating_matches_the_reference_over_many_random_plans_and_usages() {
        let mut rng = StdRng::seed_from_u64(0x5EED_B111);
        let mut priced = 0;
        for _ in 0..5_000 {
            let metrics = Metric::ALL
                .into_iter()
                .map(|metric| (metric, random_terms(&mut rng)))
                .collect();
            let plan = plan(rng.random_range(0..100_000), metrics);
            let usage: BTreeMap<Metric, u64> = Metric::ALL
                .into_iter()
                .map(|m| (m, rng.random_range(0..12_000)))
                .collect();
            match (rate(&plan, &usage), oracle(&plan, &usage)) {
                (Ok(invoice), Some((total, quantities))) => {
                    priced += 1;
                    assert_eq!(invoice.total, total, "{plan:?} {usage:?}");
                    assert_eq!(
                        invoice.total,
                        invoice.lines.iter().map(|l| l.amount).sum::<i64>()
                    );
                    for (metric, quantity) in quantities {
                        let billed: u64 = invoice
                            .lines
                            .iter()
                            .filter(|l| l.metric == Some(metric))
                            .map(|l| l.quantity)
                            .sum();
                        assert_eq!(billed, quantity);
                        assert_eq!(billed, usage[&metric]);
                    }
                }
                (Err(RatingError::NoOveragePrice { .. }), None) => {}
                (ours, reference) => {
                    panic!("disagree: {ours:?} vs {reference:?} for {plan:?} {usage:?}")
                }
            }
        }
        assert!(priced > 3_000, "too few cases were priced ({priced})");
    }
}
