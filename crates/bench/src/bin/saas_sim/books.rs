//! The simulator's own books: what it was told happened, kept apart from the service's
//! store, and compared with it at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

/// A tenant as the simulator knows it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub index: usize,
    pub tenant_id: String,
    pub signup_id: String,
    /// The plan it signed up on; [`Live::plan_at`] knows the changes.
    pub plan: String,
    /// The start of the tenant's first billing period (its activation).
    pub first_period: String,
    /// Share of the traffic: a few tenants are hot, most are small.
    pub weight: f64,
    pub live: Arc<Live>,
}

impl Tenant {
    /// The key the tenant uses now.
    pub fn key(&self) -> String {
        self.live.state().api_key.clone()
    }

    pub fn key_id(&self) -> String {
        self.live.state().key_id.clone()
    }

    pub fn erased(&self) -> bool {
        self.live.state().erased
    }

    /// The address it signed up with (personal data, gone after an erasure).
    pub fn email(&self) -> String {
        Self::email_of(self.index)
    }

    pub fn email_of(index: usize) -> String {
        format!("sim+{index}@example.com")
    }

    /// The company name it signed up with.
    pub fn company_of(index: usize) -> String {
        format!("Simulated tenant {index}")
    }
}

/// What changes in a tenant's life, and the gate that keeps its usage out while a
/// change is under way: usage goes in under `gate.read()`, a change under
/// `gate.write()`, so that the books know which side of a change each batch fell on.
#[derive(Debug)]
pub struct Live {
    pub gate: tokio::sync::RwLock<()>,
    state: Mutex<LiveState>,
}

#[derive(Debug, Clone)]
pub struct LiveState {
    pub api_key: String,
    pub key_id: String,
    pub suspended: bool,
    /// Asked to be erased: no more usage, and checked for what it left.
    pub erased: bool,
    /// Its card declines: dunning may suspend it at any moment, until it comes back
    /// with a new card.
    pub declining: bool,
    pub changes: Vec<PlanChange>,
    /// Confirmed its address with the token mailed to it: it may be mailed.
    pub confirmed: bool,
    /// Win-back campaigns it may have had: its suspensions and moves to the free plan.
    pub campaigns: usize,
}

/// A plan change as the simulator asked for it and saw it take effect.
#[derive(Debug, Clone)]
pub struct PlanChange {
    pub to: String,
    pub effective_at: DateTime<Utc>,
    /// Taken at once (an upgrade): its base fees are prorated, and the period's usage so
    /// far stays rated under `from`.
    pub at_once: bool,
    /// For a change taken at once: the period's usage acknowledged before it.
    pub usage_before: MetricUsage,
}

impl Live {
    pub fn new(api_key: String, key_id: String) -> Arc<Live> {
        Arc::new(Live {
            gate: tokio::sync::RwLock::new(()),
            state: Mutex::new(LiveState {
                api_key,
                key_id,
                suspended: false,
                erased: false,
                declining: false,
                changes: Vec::new(),
                confirmed: false,
                campaigns: 0,
            }),
        })
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan in effect at `at`, from `first` and the changes.
    pub fn plan_at(&self, first: &str, at: DateTime<Utc>) -> String {
        self.state()
            .changes
            .iter()
            .rfind(|c| c.effective_at <= at)
            .map_or_else(|| first.to_owned(), |c| c.to.clone())
    }
}

/// Per metric, the units acknowledged.
pub type MetricUsage = BTreeMap<String, u64>;
/// Per billing period (its start, as the service said when it acknowledged), the usage.
pub type PeriodUsage = BTreeMap<String, MetricUsage>;

/// A batch stored by an attempt whose answer was lost, across a period's end: it was
/// counted in one of `periods` (its starts), which one the client cannot know.
#[derive(Debug, Clone)]
pub struct Uncertain {
    pub periods: Vec<DateTime<Utc>>,
    pub usage: MetricUsage,
}

/// Acknowledged usage, per tenant.
#[derive(Default)]
pub struct Books {
    usage: Mutex<BTreeMap<String, PeriodUsage>>,
    uncertain: Mutex<BTreeMap<String, Vec<Uncertain>>>,
    violations: Mutex<Vec<String>>,
}

/// An instant as the service writes it (RFC 3339, in any offset or precision).
pub fn instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Of the periods `cycle` long counted from `origin`, the start of the one holding `at`.
pub fn period_holding(origin: DateTime<Utc>, cycle: TimeDelta, at: DateTime<Utc>) -> DateTime<Utc> {
    let (span, length) = ((at - origin).num_milliseconds(), cycle.num_milliseconds());
    if length <= 0 {
        return origin;
    }
    origin + cycle * i32::try_from(span.div_euclid(length)).unwrap_or(0)
}

impl Books {
    /// A batch's usage, acknowledged as counted in one of `periods`.
    pub fn acknowledge_batch(&self, tenant: &str, periods: Vec<String>, usage: MetricUsage) {
        let periods: Vec<DateTime<Utc>> = periods.iter().filter_map(|p| instant(p)).collect();
        match periods.as_slice() {
            [one] => {
                let mut books = self.usage.lock().unwrap_or_else(|p| p.into_inner());
                let period = books
                    .entry(tenant.to_owned())
                    .or_default()
                    .entry(one.to_rfc3339_opts(SecondsFormat::AutoSi, true))
                    .or_default();
                for (metric, value) in usage {
                    *period.entry(metric).or_default() += value;
                }
            }
            [] => self.violation(format!("{tenant}: a batch acknowledged in no period")),
            _ => self
                .uncertain
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(tenant.to_owned())
                .or_default()
                .push(Uncertain { periods, usage }),
        }
    }

    pub fn uncertain_of(&self, tenant: &str) -> Vec<Uncertain> {
        self.uncertain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Per period start, per metric, what `tenant` was acknowledged.
    pub fn usage_of(&self, tenant: &str) -> PeriodUsage {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    pub fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One invariant's tally for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub checked: u64,
    pub violated: u64,
}

impl Tally {
    pub fn check(&mut self, ok: bool) -> bool {
        self.checked += 1;
        if !ok {
            self.violated += 1;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_holding_an_instant_counts_whole_cycles_either_way() {
        let origin = instant("2026-01-01T00:00:00Z").unwrap();
        let cycle = TimeDelta::seconds(12);
        let at = |s: &str| instant(s).unwrap();
        assert_eq!(
            period_holding(origin, cycle, at("2026-01-01T00:00:00Z")),
            origin
        );
        assert_eq!(
            period_holding(origin, cycle, at("2026-01-01T00:00:35.999Z")),
            at("2026-01-01T00:00:24Z")
        );
        assert_eq!(
            period_holding(origin, cycle, at("2025-12-31T23:59:59Z")),
            at("2025-12-31T23:59:48Z")
        );
        assert_eq!(
            period_holding(origin, TimeDelta::zero(), at("2026-02-01T00:00:00Z")),
            origin
        );
    }
}
