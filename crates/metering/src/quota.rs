//! Quota arithmetic, with no I/O: whether a batch fits, and which alert thresholds it
//! crosses. All sums are checked; nothing wraps.

use tenancy::plans::MetricTerms;

/// Percentages of a quota at which an alert is recorded.
pub const ALERT_THRESHOLDS: [u8; 2] = [80, 100];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("the batch would take usage to {requested_total}, past the limit of {limit}")]
    Exceeded {
        limit: u64,
        used: u64,
        requested_total: u128,
    },
    /// The period's total would not fit in 64 bits.
    #[error("the period's usage would overflow")]
    Overflow,
}

/// The usage after adding `adding` to `used`, if the terms allow it.
pub fn admit(terms: &MetricTerms, used: u64, adding: u64) -> Result<u64, QuotaError> {
    let total = u128::from(used) + u128::from(adding);
    if let Some(limit) = terms.limit.filter(|limit| total > u128::from(*limit)) {
        return Err(QuotaError::Exceeded {
            limit,
            used,
            requested_total: total,
        });
    }
    u64::try_from(total).map_err(|_| QuotaError::Overflow)
}

/// The period's event count after adding `adding` events to `counted`, if the plan's
/// event limit allows it. Counts every event, whatever its value.
pub fn admit_events(terms: &MetricTerms, counted: u64, adding: u64) -> Result<u64, QuotaError> {
    let total = u128::from(counted) + u128::from(adding);
    if total > u128::from(terms.event_limit) {
        return Err(QuotaError::Exceeded {
            limit: terms.event_limit,
            used: counted,
            requested_total: total,
        });
    }
    u64::try_from(total).map_err(|_| QuotaError::Overflow)
}

/// The quota alerts are measured against: the hard limit, or the included units where
/// overage is billed instead. `None` when there is nothing to measure against.
pub fn alert_quota(terms: &MetricTerms) -> Option<u64> {
    terms
        .limit
        .or(Some(terms.included))
        .filter(|quota| *quota > 0)
}

/// The thresholds (in percent) that usage passes on its way from `before` to `after`.
pub fn crossed_thresholds(quota: u64, before: u64, after: u64) -> Vec<u8> {
    ALERT_THRESHOLDS
        .into_iter()
        .filter(|pct| {
            let line = u128::from(quota) * u128::from(*pct);
            u128::from(before) * 100 < line && line <= u128::from(after) * 100
        })
        .collect()
}

/// What is left under a hard limit; `None` without one.
pub fn remaining(terms: &MetricTerms, used: u64) -> Option<u64> {
    terms.limit.map(|limit| limit.saturating_sub(used))
}

/// Usage past the included units (billed as overage where there is no hard limit).
pub fn overage(terms: &MetricTerms, used: u64) -> u64 {
    used.saturating_sub(terms.included)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(included: u64, limit: Option<u64>) -> MetricTerms {
        MetricTerms {
            included,
            limit,
            unit_size: 1,
            tiers: vec![],
            event_limit: 1_000,
        }
    }

    #[test]
    fn events_are_counted_against_the_event_limit_whatever_their_values() {
        let plan = terms(100, None);
        assert_eq!(admit_events(&plan, 999, 1), Ok(1_000));
        assert!(matches!(
            admit_events(&plan, 1_000, 1),
            Err(QuotaError::Exceeded {
                limit: 1_000,
                used: 1_000,
                ..
            })
        ));
        assert!(admit_events(&plan, 0, 1_001).is_err());
    }

    #[test]
    fn hard_limits_admit_up_to_and_including_the_limit() {
        let hard = terms(100, Some(100));
        assert_eq!(admit(&hard, 90, 10), Ok(100));
        assert_eq!(
            admit(&hard, 90, 11),
            Err(QuotaError::Exceeded {
                limit: 100,
                used: 90,
                requested_total: 101
            })
        );
        assert_eq!(admit(&hard, 100, 0), Ok(100));
    }

    #[test]
    fn soft_limits_admit_overage_but_never_wrap() {
        let soft = terms(100, None);
        assert_eq!(admit(&soft, 90, 1000), Ok(1090));
        assert_eq!(admit(&soft, u64::MAX - 1, 1), Ok(u64::MAX));
        assert_eq!(admit(&soft, u64::MAX, 1), Err(QuotaError::Overflow));
        assert_eq!(
            admit(&terms(0, Some(u64::MAX)), u64::MAX, 1).unwrap_err(),
            QuotaError::Exceeded {
                limit: u64::MAX,
                used: u64::MAX,
                requested_total: u128::from(u64::MAX) + 1
            }
        );
    }

    #[test]
    fn thresholds_are_crossed_once_on_the_way_up() {
        assert_eq!(crossed_thresholds(100, 0, 79), Vec::<u8>::new());
        assert_eq!(crossed_thresholds(100, 0, 80), vec![80]);
        assert_eq!(crossed_thresholds(100, 80, 99), Vec::<u8>::new());
        assert_eq!(crossed_thresholds(100, 79, 100), vec![80, 100]);
        assert_eq!(crossed_thresholds(100, 100, 500), Vec::<u8>::new());
        assert_eq!(crossed_thresholds(u64::MAX, 0, u64::MAX), vec![80, 100]);
        // 80% of 3 is 2.4: reached at 3, not 2.
        assert_eq!(crossed_thresholds(3, 0, 2), Vec::<u8>::new());
        assert_eq!(crossed_thresholds(3, 2, 3), vec![80, 100]);
    }

    #[test]
    fn alerts_measure_against_the_limit_else_the_included_units() {
        assert_eq!(alert_quota(&terms(10, Some(50))), Some(50));
        assert_eq!(alert_quota(&terms(10, None)), Some(10));
        assert_eq!(alert_quota(&terms(0, None)), None);
        assert_eq!(remaining(&terms(10, Some(50)), 60), Some(0));
        assert_eq!(overage(&terms(10, None), 15), 5);
    }
}
