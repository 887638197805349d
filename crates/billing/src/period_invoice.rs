//! What an invoice bills. Base fees are billed in advance and usage in arrears, so:
//!
//! - the **signup invoice** bills the first period's base fee, paid before the tenant
//!   is provisioned;
//! - the invoice that **closes a period** bills the period's usage, each part rated
//!   under the plan in effect when it was metered (a plan change taken at once records
//!   the usage so far; see `rating::rate_segments`), so that a change of plan never
//!   lowers what was already used and owed; the prorations of every upgrade taken in it
//!   (the unused part of the base fee paid in advance credited, the new plan's charged
//!   for the same time); and the next period's base fee, under the plan in effect when it
//!   starts (a downgrade at the period's end counts).
//!
//! The upcoming-invoice preview composes the current period the same way, from the usage
//! so far.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use saas_core::{BillingPeriod, Metric};
use sqlx::PgConnection;
use tenancy::StoreError;
use tenancy::plans::Plan;
use tenancy::tenants::Tenant;

use crate::rating::{self, RatedInvoice, RatingError};

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rating(#[from] RatingError),
}

/// A period's invoice, and the plan its usage was rated under.
#[derive(Debug, Clone)]
pub struct Composed {
    pub plan: Plan,
    pub invoice: RatedInvoice,
}

/// Whether an invoice bills the next period's base fee in advance: every period
/// invoice does, but the last one of a tenant that left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextPeriod {
    BillInAdvance,
    None,
}

/// The invoice that closes `period` of `tenant`, whose usage in it was `usage`.
pub async fn compose(
    conn: &mut PgConnection,
    tenant: &Tenant,
    period: BillingPeriod,
    usage: &BTreeMap<Metric, u64>,
    next_period: NextPeriod,
) -> Result<Composed, ComposeError> {
    let history = lifecycle::plan_history::load(conn, tenant.id).await?;
    let mut plans = Plans::default();
    let usage_plan = plans.get(conn, history.plan_at(period.end, false)).await?;
    let next_plan = plans.get(conn, history.plan_at(period.end, true)).await?;
    let next = tenant.period_at(period.end);
    let mut lines = Vec::new();
    if next_period == NextPeriod::BillInAdvance {
        lines.push(rating::base_fee(
            &next_plan,
            format!(
                "{} plan, {} to {} (in advance)",
                next_plan.name,
                stamp(next.start),
                stamp(next.end)
            ),
        ));
    }
    let parts = usage_parts(&history, period, usage);
    let mut part_plans = Vec::with_capacity(parts.len());
    for part in &parts {
        part_plans.push(plans.get(conn, &part.plan).await?);
    }
    let segments: Vec<rating::UsageSegment<'_>> = parts
        .iter()
        .zip(&part_plans)
        .map(|(part, plan)| rating::UsageSegment {
            plan,
            from: &part.from,
            to: &part.to,
            label: part.label.clone(),
        })
        .collect();
    lines.extend(rating::rate_segments(&segments)?);
    let length = seconds(period.end - period.start);
    for change in history.prorated_between(period.start, period.end) {
        let from = plans.get(conn, &change.from_plan).await?;
        let to = plans.get(conn, &change.to_plan).await?;
        let remaining = seconds(period.end - change.effective_at);
        lines.extend(rating::proration(
            &from,
            &to,
            remaining,
            length,
            &stamp(change.effective_at),
        )?);
    }
    let invoice = rating::total(usage_plan.currency.clone(), lines)?;
    Ok(Composed {
        plan: usage_plan,
        invoice,
    })
}

/// What the invoice closing the tenant's current period comes to, from `usage` so far.
pub async fn upcoming(
    conn: &mut PgConnection,
    tenant: saas_core::TenantId,
    now: DateTime<Utc>,
    usage: &BTreeMap<Metric, u64>,
) -> Result<(BillingPeriod, Composed), ComposeError> {
    let tenant = tenancy::tenants::get(conn, tenant).await?;
    let period = tenant.period_at(now);
    let composed = compose(conn, &tenant, period, usage, NextPeriod::BillInAdvance).await?;
    Ok((period, composed))
}

/// The usage of a period under one plan: from the period's usage when the plan took
/// effect to when the next one did (or the period ended).
struct UsagePart {
    plan: String,
    from: BTreeMap<Metric, u64>,
    to: BTreeMap<Metric, u64>,
    label: String,
}

/// The period's usage split where a plan change took effect at once; one part when none
/// did. Parts are labelled only when there are several.
fn usage_parts(
    history: &lifecycle::plan_history::PlanHistory,
    period: BillingPeriod,
    usage: &BTreeMap<Metric, u64>,
) -> Vec<UsagePart> {
    let mut parts = vec![UsagePart {
        plan: history.plan_at(period.start, true).to_owned(),
        from: BTreeMap::new(),
        to: usage.clone(),
        label: String::new(),
    }];
    for (change, before) in history.usage_splits_between(period.start, period.end) {
        let last = parts.last_mut().expect("one part at least");
        last.to = before.clone();
        last.label = format!(" (on {} until {})", last.plan, stamp(change.effective_at));
        parts.push(UsagePart {
            plan: change.to_plan.clone(),
            from: before.clone(),
            to: usage.clone(),
            label: format!(
                " (on {} from {})",
                change.to_plan,
                stamp(change.effective_at)
            ),
        });
    }
    if parts.len() == 1 {
        parts[0].label.clear();
    }
    parts
}

/// The signup invoice: the first period's base fee under `plan`.
pub fn signup_invoice(plan: &Plan) -> Result<RatedInvoice, RatingError> {
    let line = rating::base_fee(
        plan,
        format!("{} plan, first period (in advance)", plan.name),
    );
    rating::total(plan.currency.clone(), vec![line])
}

/// Plans read once per composition.
#[derive(Default)]
struct Plans(HashMap<String, Plan>);

impl Plans {
    async fn get(&mut self, conn: &mut PgConnection, code: &str) -> Result<Plan, StoreError> {
        if let Some(plan) = self.0.get(code) {
            return Ok(plan.clone());
        }
        let plan = tenancy::plans::get(conn, code).await?;
        self.0.insert(code.to_owned(), plan.clone());
        Ok(plan)
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn seconds(delta: chrono::TimeDelta) -> u64 {
    u64::try_from(delta.num_seconds()).unwrap_or(0)
}
