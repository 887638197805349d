//! The simulator's own books: what it was told happened, kept apart from the service's
//! store, and compared with it at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

/// Acknowledged usage, per tenant.
#[derive(Default)]
pub struct Books {
    usage: Mutex<BTreeMap<String, PeriodUsage>>,
    violations: Mutex<Vec<String>>,
}

impl Books {
    pub fn acknowledge(&self, tenant: &str, period_start: &str, metric: &str, value: u64) {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        *usage
            .entry(tenant.to_owned())
            .or_default()
            .entry(period_start.to_owned())
            .or_default()
            .entry(metric.to_owned())
            .or_default() += value;
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
