//! The books against the service, after the run: every acknowledged event invoiced once,
//! every invoice re-rated, every Stripe invoice equal to ours and paid once, no hard
//! limit passed, the audit chain intact.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use crate::api::{Api, As};
use crate::books::{Books, MetricUsage, Tally, Tenant, instant};
use crate::rerate::{self, Plan};
use crate::settling::settled_invoices;
use crate::stripe_view::{StripeSource, StripeView};
use crate::usage_store::UsageStore;

#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    /// Per tenant and billing period: the invoiced quantities equal the acknowledged usage.
    pub usage_invoiced_once: Tally,
    /// Per tenant and ended period: ClickHouse holds the acknowledged usage, each event
    /// once.
    pub clickhouse_equal: Tally,
    /// Per invoice: its total equals the re-rating from the published plans.
    pub rerated: Tally,
    /// Per invoice to collect: one Stripe invoice, equal line for line, paid once.
    pub stripe_equal: Tally,
    /// Per tenant, period and metric with a hard limit: the limit held.
    pub limits_held: Tally,
    /// Per tenant: the current period's usage as the summary shows it equals the books.
    pub current_usage: Tally,
    /// Per tenant: every ended period has exactly one period invoice, and no other does.
    pub every_period_once: Tally,
    pub audit_chain_valid: Tally,
    /// Per tenant with batches whose answers were lost: those batches counted once.
    pub lost_answers_counted_once: Tally,
    pub invoices: u64,
}

/// Waits until every tenant's ended periods with acknowledged usage are invoiced and
/// settled (paid, or open where nothing is collected), then checks everything.
pub async fn verify(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    plans: &BTreeMap<String, Plan>,
    stripe: &StripeSource,
    clickhouse: &UsageStore,
    (cutoff, settle_within): (DateTime<Utc>, Duration),
) -> anyhow::Result<(Verdict, StripeView)> {
    let mut verdict = Verdict::default();
    // Every invoice read here, to compare with Stripe once all are read: Stripe is read
    // after them, so each one collected by then is there (billing goes on meanwhile, and
    // what is invoiced after this point is not part of the check).
    let mut to_compare = Vec::new();
    let deadline = Instant::now() + settle_within;
    for tenant in tenants.iter().filter(|t| !t.erased()) {
        let changes = tenant.live.state().changes.clone();
        let settled = settled_invoices(api, tenant, books, (cutoff, deadline)).await?;
        let settled_cycle = settled.cycle;
        // The plan whose limits held at the end of the period starting at `start`.
        let limits_of = |start: DateTime<Utc>| {
            let last_use = start + settled_cycle - chrono::TimeDelta::milliseconds(1);
            plans.get(&tenant.live.plan_at(&tenant.plan, last_use))
        };
        let (invoices, current_start) = (settled.invoices, settled.current);
        verdict.invoices += invoices.len() as u64;
        let mut starts: Vec<DateTime<Utc>> = invoices
            .iter()
            .filter(|i| i["kind"] == "period")
            .filter_map(|i| instant(i["period_start"].as_str()?))
            .collect();
        starts.sort();
        if !verdict.every_period_once.check(starts == settled.ended) {
            books.violation(format!(
                "{}: period invoices for {starts:?}, periods ended {:?}",
                tenant.tenant_id, settled.ended
            ));
        }
        let usage = books.usage_of(&tenant.tenant_id);
        let uncertain = books.uncertain_of(&tenant.tenant_id);
        let by_period: HashMap<DateTime<Utc>, &Value> = invoices
            .iter()
            .filter(|i| i["kind"] == "period")
            .filter_map(|i| Some((instant(i["period_start"].as_str()?)?, i)))
            .collect();
        let exact_in = |start: DateTime<Utc>| -> MetricUsage {
            usage
                .iter()
                .filter(|(s, _)| instant(s) == Some(start))
                .flat_map(|(_, m)| m.clone())
                .collect()
        };
        let maybe_in = |start: DateTime<Utc>| -> MetricUsage {
            let mut sum = MetricUsage::new();
            for batch in uncertain.iter().filter(|b| b.periods.contains(&start)) {
                add(&mut sum, &batch.usage);
            }
            sum
        };
        let mut periods: BTreeSet<DateTime<Utc>> =
            usage.keys().filter_map(|s| instant(s)).collect();
        periods.extend(uncertain.iter().flat_map(|b| b.periods.iter().copied()));
        // What the service counted beyond the batches whose period is known: it must be
        // the batches whose answers were lost, each counted once.
        let mut surplus = MetricUsage::new();
        for start in periods {
            let exact = exact_in(start);
            let plan = limits_of(start).context("the tenant's plan")?;
            for (metric, used) in &exact {
                let limit = plan.metrics.get(metric).and_then(|t| t.limit);
                if !verdict
                    .limits_held
                    .check(limit.is_none_or(|limit| *used <= limit))
                {
                    books.violation(format!(
                        "{}: {metric} reached {used} past its limit {limit:?}",
                        tenant.tenant_id
                    ));
                }
            }
            if Some(start) == current_start {
                continue;
            }
            let Some(invoice) = by_period.get(&start) else {
                verdict.usage_invoiced_once.check(false);
                books.violation(format!("{}: period {start} not invoiced", tenant.tenant_id));
                continue;
            };
            let invoiced = quantities(invoice);
            let stored = clickhouse.of(&tenant.tenant_id, start);
            let units: BTreeMap<String, u64> =
                stored.iter().map(|(m, c)| (m.clone(), c.units)).collect();
            let once = stored.values().all(|c| c.rows == c.ids);
            if !verdict
                .clickhouse_equal
                .check(once && within(&units, &exact, &maybe_in(start), &mut MetricUsage::new()))
            {
                books.violation(format!(
                    "{}: period {start} in ClickHouse {stored:?}, acknowledged {exact:?}",
                    tenant.tenant_id
                ));
            }
            if !verdict.usage_invoiced_once.check(within(
                &invoiced,
                &exact,
                &maybe_in(start),
                &mut surplus,
            )) {
                books.violation(format!(
                    "{}: period {start} invoiced {invoiced:?}, acknowledged {exact:?} \
                     and perhaps {:?}",
                    tenant.tenant_id,
                    maybe_in(start)
                ));
            }
        }
        for invoice in invoices.iter().filter(|i| i["kind"] == "period") {
            let start = invoice["period_start"].as_str().unwrap_or_default();
            // Where a lost answer leaves the period's usage open, the invoiced quantities
            // (bounded above) are re-rated.
            let used = match instant(start) {
                Some(start) if maybe_in(start).is_empty() => exact_in(start),
                _ => quantities(invoice),
            };
            let end = invoice["period_end"].as_str().and_then(instant);
            let expected = match (instant(start), end) {
                (Some(start), Some(end)) => rerate::period_invoice_total(
                    plans,
                    &tenant.plan,
                    &changes,
                    (start, end),
                    &used,
                )?,
                _ => anyhow::bail!("invoice {} without its period", invoice["id"]),
            };
            let total = invoice["total"].as_i64().map(i128::from);
            if !verdict.rerated.check(total == Some(expected)) {
                books.violation(format!(
                    "{}: invoice {} totals {total:?}, re-rated {expected}",
                    tenant.tenant_id, invoice["id"]
                ));
            }
        }
        to_compare.extend(invoices.iter().cloned());
        let current = current_start.unwrap_or_default();
        check_current_usage(
            api,
            books,
            tenant,
            (&exact_in(current), &maybe_in(current)),
            &mut surplus,
            &mut verdict.current_usage,
        )
        .await?;
        if !uncertain.is_empty() {
            let mut lost = MetricUsage::new();
            for batch in &uncertain {
                add(&mut lost, &batch.usage);
            }
            surplus.retain(|_, units| *units > 0);
            if !verdict.lost_answers_counted_once.check(surplus == lost) {
                books.violation(format!(
                    "{}: batches whose answers were lost sum to {lost:?}, counted {surplus:?}",
                    tenant.tenant_id
                ));
            }
        }
    }
    let stripe = StripeView::load(&stripe.base, &stripe.key).await?;
    for invoice in &to_compare {
        check_at_stripe(invoice, &stripe, books, &mut verdict.stripe_equal);
    }
    let audit = api
        .call(
            "GET /v1/admin/audit/verify",
            Method::GET,
            "/v1/admin/audit/verify",
            As::Operator,
            None,
        )
        .await?;
    if !verdict
        .audit_chain_valid
        .check(audit.status == 200 && audit.body["valid"] == true)
    {
        books.violation(format!("the audit chain does not verify: {}", audit.body));
    }
    Ok((verdict, stripe))
}

/// Per metric, the quantities an invoice bills (all its lines of the metric).
fn quantities(invoice: &Value) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for line in invoice["lines"].as_array().into_iter().flatten() {
        if let Some(metric) = line["metric"].as_str() {
            *sums.entry(metric.to_owned()).or_default() += line["quantity"].as_u64().unwrap_or(0);
        }
    }
    sums
}

/// The amounts of an invoice's lines, sorted; of ours only those Stripe is sent (a line
/// of nothing is not).
fn line_amounts(lines: &Value, ours: bool) -> Vec<i64> {
    let mut amounts: Vec<i64> = lines
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| line["amount"].as_i64())
        .filter(|amount| !ours || *amount != 0)
        .collect();
    amounts.sort_unstable();
    amounts
}

fn check_at_stripe(invoice: &Value, stripe: &StripeView, books: &Books, tally: &mut Tally) {
    let id = invoice["id"].as_str().unwrap_or_default();
    let total = invoice["total"].as_i64().unwrap_or(0);
    let at_stripe = stripe
        .by_reference
        .get(id)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let ok = if total == 0 {
        // Nothing to collect: paid as made, never sent to Stripe.
        invoice["status"] == "paid" && at_stripe.is_empty()
    } else {
        matches!(at_stripe, [one] if one["total"].as_i64() == Some(total)
            && one["amount_paid"].as_i64() == Some(total)
            && one["status"] == "paid"
            && line_amounts(&invoice["lines"], true) == line_amounts(&one["lines"]["data"], false)
            && one["lines"]["has_more"] != true)
            && invoice["status"] == "paid"
    };
    if !tally.check(ok) {
        let seen: Vec<String> = at_stripe
            .iter()
            .map(|i| {
                format!(
                    "{} {} total {} paid {}",
                    i["id"], i["status"], i["total"], i["amount_paid"]
                )
            })
            .collect();
        books.violation(format!(
            "invoice {id} ({} of {total}) at Stripe: {seen:?}",
            invoice["status"]
        ));
    }
}

async fn check_current_usage(
    api: &Api,
    books: &Books,
    tenant: &Tenant,
    (exact, maybe): (&MetricUsage, &MetricUsage),
    surplus: &mut MetricUsage,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let summary = usage_summary(api, tenant).await?;
    let shown: MetricUsage = rerate::METRICS
        .iter()
        .map(|metric| {
            let used = summary["metrics"][*metric]["used"].as_u64().unwrap_or(0);
            ((*metric).to_owned(), used)
        })
        .collect();
    if !tally.check(within(&shown, exact, maybe, surplus)) {
        books.violation(format!(
            "{}: the summary shows {}, the books {exact:?} and perhaps {maybe:?}",
            tenant.tenant_id, summary["metrics"]
        ));
    }
    Ok(())
}

/// Whether every metric of `counted` lies between `exact` and `exact + maybe`; adds
/// what it counted beyond `exact` to `surplus`.
fn within(
    counted: &BTreeMap<String, u64>,
    exact: &MetricUsage,
    maybe: &MetricUsage,
    surplus: &mut MetricUsage,
) -> bool {
    rerate::METRICS.iter().all(|metric| {
        let get = |usage: &BTreeMap<String, u64>| usage.get(*metric).copied().unwrap_or(0);
        let (counted, low) = (get(counted), get(exact));
        let high = low + get(maybe);
        *surplus.entry((*metric).to_owned()).or_default() += counted.saturating_sub(low);
        low <= counted && counted <= high
    })
}

fn add(into: &mut MetricUsage, usage: &MetricUsage) {
    for (metric, units) in usage {
        *into.entry(metric.clone()).or_default() += units;
    }
}

pub async fn usage_summary(api: &Api, tenant: &Tenant) -> anyhow::Result<Value> {
    Ok(api
        .call(
            "GET /v1/usage/summary",
            Method::GET,
            "/v1/usage/summary",
            As::Key(&tenant.key()),
            None,
        )
        .await?
        .body)
}
