//! `stripe_billing`: the Stripe API answers, and the probe's upcoming invoice carries
//! exactly the probe's usage.

use std::collections::BTreeMap;

use chrono::Utc;
use saas_core::Metric;

use super::usage::ensure_usage_probe;
use super::{CheckStatus, Outcome, USAGE_PROBE};
use crate::state::AppState;

pub(super) async fn stripe_billing(state: &AppState) -> Outcome {
    let Some(key) = &state.config.stripe.secret_key else {
        return Ok((
            CheckStatus::Skip,
            "no Stripe key configured (SAAS_STRIPE__SECRET_KEY)".into(),
        ));
    };
    let key = secrecy::ExposeSecret::expose_secret(key);
    let live = key.contains("_live_");
    if live && !state.config.stripe.allow_live_mode {
        return Err("a live-mode key without stripe.allow_live_mode".into());
    }
    let payments = state
        .payments
        .as_ref()
        .ok_or("the Stripe client did not start")?;
    payments
        .ping()
        .await
        .map_err(|e| format!("Stripe API: {e}"))?;
    ensure_usage_probe(state).await?;

    let mut tx = state
        .db
        .tenant_tx(USAGE_PROBE)
        .await
        .map_err(|e| e.to_string())?;
    let now = Utc::now();
    let terms = metering::ledger::tenant_terms(&mut tx, USAGE_PROBE, now)
        .await
        .map_err(|e| format!("probe tenant: {e}"))?;
    let used = metering::counters::period_usage(&mut tx, USAGE_PROBE, terms.period.start)
        .await
        .map_err(|e| e.to_string())?;
    let plan = tenancy::plans::get(&mut tx, &terms.plan_code)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    let usage: BTreeMap<Metric, u64> = Metric::ALL
        .iter()
        .map(|m| (*m, used.get(m).copied().unwrap_or(0)))
        .collect();
    let invoice = billing::rate(&plan, &usage).map_err(|e| format!("rating: {e}"))?;
    for (metric, used) in &usage {
        let included = plan.metrics.get(metric).map_or(0, |t| t.included);
        let lines = || {
            invoice
                .lines
                .iter()
                .filter(|line| line.metric == Some(*metric))
        };
        let billed: u64 = lines().map(|line| line.quantity).sum();
        let overage: u64 = lines()
            .filter(|line| line.kind == billing::LineKind::Overage)
            .map(|line| line.quantity)
            .sum();
        if billed != *used || overage != used.saturating_sub(included) {
            return Err(format!(
                "{metric}: the invoice carries {billed} ({overage} as overage) for a usage of {used}"
            ));
        }
    }
    let sum: i64 = invoice.lines.iter().map(|line| line.amount).sum();
    if sum != invoice.total {
        return Err(format!(
            "invoice total {} is not the sum of its lines {sum}",
            invoice.total
        ));
    }
    Ok((
        CheckStatus::Pass,
        format!(
            "{} mode; Stripe answers; upcoming invoice of {} lines ({} {}) matches the probe's usage",
            if live { "live" } else { "test" },
            invoice.lines.len(),
            invoice.total,
            invoice.currency
        ),
    ))
}
