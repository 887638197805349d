//! The simulator's own books: what it was told happened, kept apart from the service's
//! store, and compared with it at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};

/// A tenant as the simulator knows it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub index: usize,
    pub tenant_id: String,
    pub signup_id: String,
    pub api_key: String,
    pub key_id: String,
    pub plan: String,
    /// The start of the tenant's first billing period (its activation).
    pub first_period: String,
    /// Share of the traffic: a few tenants are hot, most are small.
    pub weight: f64,
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

/// One spelling per instant, whichever the service used.
fn canonical(period: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(period)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Books {
    /// A batch's usage, acknowledged as counted in one of `periods`.
    pub fn acknowledge_batch(&self, tenant: &str, periods: Vec<String>, usage: MetricUsage) {
        let periods: Vec<DateTime<Utc>> = periods.iter().filter_map(|p| canonical(p)).collect();
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
