//! Billing periods. A tenant's periods follow one another from its billing anchor (the
//! moment it was activated) at a fixed cycle: calendar months in production, seconds in
//! tests that want to see whole cycles quickly.
//!
//! Periods are computed, never stored per period, so every part of the system (quotas,
//! usage reads, invoice runs) agrees on which period an instant belongs to.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BillingCycle {
    /// Calendar months from the anchor; a period anchored on the 31st ends on the last
    /// day of shorter months (each boundary is computed from the anchor, not the previous
    /// boundary, so the day comes back in longer months).
    Months(u32),
    Seconds(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid billing cycle {0:?} (expected e.g. \"1mo\" or \"30s\")")]
pub struct InvalidBillingCycle(pub String);

impl FromStr for BillingCycle {
    type Err = InvalidBillingCycle;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidBillingCycle(s.to_owned());
        let (number, cycle): (&str, fn(u64) -> Option<BillingCycle>) =
            if let Some(n) = s.strip_suffix("mo") {
                (n, |n| {
                    u32::try_from(n)
                        .ok()
                        .filter(|n| *n <= 120)
                        .map(BillingCycle::Months)
                })
            } else if let Some(n) = s.strip_suffix('s') {
                (n, |n| {
                    (n <= 10 * 366 * 86_400).then_some(BillingCycle::Seconds(n))
                })
            } else {
                return Err(invalid());
            };
        let n: u64 = number.parse().map_err(|_| invalid())?;
        if n == 0 {
            return Err(invalid());
        }
        cycle(n).ok_or_else(invalid)
    }
}

impl fmt::Display for BillingCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BillingCycle::Months(n) => write!(f, "{n}mo"),
            BillingCycle::Seconds(n) => write!(f, "{n}s"),
        }
    }
}

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BillingPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl BillingPeriod {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }

    /// Seconds from `at` to the end of the period, at least 1 (for `Retry-After`).
    pub fn seconds_left(&self, at: DateTime<Utc>) -> u64 {
        u64::try_from((self.end - at).num_seconds())
            .unwrap_or(0)
            .max(1)
    }
}

impl BillingCycle {
    /// The start of the `index`th period after `anchor` (period 0 starts at the anchor).
    fn boundary(self, anchor: DateTime<Utc>, index: u64) -> DateTime<Utc> {
        match self {
            BillingCycle::Months(n) => u32::try_from(index * u64::from(n))
                .ok()
                .and_then(|months| anchor.checked_add_months(Months::new(months)))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            BillingCycle::Seconds(n) => i64::try_from(index.saturating_mul(n))
                .ok()
                .and_then(TimeDelta::try_seconds)
                .and_then(|delta| anchor.checked_add_signed(delta))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    pub fn nth(self, anchor: DateTime<Utc>, index: u64) -> BillingPeriod {
        BillingPeriod {
            start: self.boundary(anchor, index),
            end: self.boundary(anchor, index + 1),
        }
    }

    /// The period that contains `at`; instants before the anchor belong to period 0.
    pub fn period_index(self, anchor: DateTime<Utc>, at: DateTime<Utc>) -> u64 {
        if at <= anchor {
            return 0;
        }
        let estimate = match self {
            BillingCycle::Seconds(n) => u64::try_from((at - anchor).num_seconds()).unwrap_or(0) / n,
            BillingCycle::Months(n) => {
                use chrono::Datelike;
                let months =
                    (at.year() - anchor.year()) * 12 + at.month() as i32 - anchor.month() as i32;
                u64::try_from(months).unwrap_or(0) / u64::from(n)
            }
        };
        // The estimate is off by at most one either way (day-of-month clamping,
        // rounding); settle it against the real boundaries.
        let mut index = estimate.saturating_sub(1);
        while self.boundary(anchor, index + 1) <= at {
            index += 1;
        }
        index
    }

    pub fn period_containing(self, anchor: DateTime<Utc>, at: DateTime<Utc>) -> BillingPeriod {
        self.nth(anchor, self.period_index(anchor, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn cycles_parse_and_print() {
        assert_eq!(
            "1mo".parse::<BillingCycle>().unwrap(),
            BillingCycle::Months(1)
        );
        assert_eq!(
            "30s".parse::<BillingCycle>().unwrap(),
            BillingCycle::Seconds(30)
        );
        assert_eq!(BillingCycle::Months(3).to_string(), "3mo");
        for bad in ["", "0s", "0mo", "mo", "s", "1d", "-1s", "1.5mo", "99999mo"] {
            assert!(bad.parse::<BillingCycle>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn monthly_periods_follow_the_anchor_and_clamp_short_months() {
        let anchor = at("2026-01-31T10:00:00Z");
        let cycle = BillingCycle::Months(1);
        assert_eq!(cycle.nth(anchor, 0).end, at("2026-02-28T10:00:00Z"));
        assert_eq!(cycle.nth(anchor, 1).start, at("2026-02-28T10:00:00Z"));
        // Computed from the anchor: March gets its 31st back.
        assert_eq!(cycle.nth(anchor, 2).start, at("2026-03-31T10:00:00Z"));
        let period = cycle.period_containing(anchor, at("2026-03-15T00:00:00Z"));
        assert_eq!(period.start, at("2026-02-28T10:00:00Z"));
        assert_eq!(period.end, at("2026-03-31T10:00:00Z"));
    }

    #[test]
    fn every_instant_falls_in_exactly_one_period() {
        let anchor = at("2025-05-31T23:59:59Z");
        for cycle in [
            BillingCycle::Months(1),
            BillingCycle::Months(3),
            BillingCycle::Seconds(7),
        ] {
            let mut t = anchor;
            for step in 0..2000 {
                let period = cycle.period_containing(anchor, t);
                assert!(period.contains(t), "{cycle} {t} not in {period:?}");
                let index = cycle.period_index(anchor, t);
                assert_eq!(cycle.nth(anchor, index), period);
                if index > 0 {
                    assert_eq!(cycle.nth(anchor, index - 1).end, period.start);
                }
                t += TimeDelta::seconds(3 + (step % 5) * 86_399 / 7);
            }
        }
    }

    #[test]
    fn boundaries_belong_to_the_period_they_start() {
        let anchor = at("2026-01-01T00:00:00Z");
        let cycle = BillingCycle::Seconds(60);
        let period = cycle.period_containing(anchor, at("2026-01-01T00:01:00Z"));
        assert_eq!(period.start, at("2026-01-01T00:01:00Z"));
        assert_eq!(period.seconds_left(at("2026-01-01T00:01:59Z")), 1);
    }
}
