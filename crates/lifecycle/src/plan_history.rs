//! Which plan a tenant was on when: read from the completed plan changes, for billing.
//!
//! A change is in effect from its `effective_at`: when it completed, for a change taken
//! at once; the period boundary it was scheduled for, for a downgrade at the period's
//! end. A downgrade still waiting for its boundary counts from that boundary too, so that
//! an invoice made before the job that applies it has run bills the right next period.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saas_core::{Metric, TenantId};
use sqlx::PgConnection;
use tenancy::StoreError;

/// One completed plan change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChange {
    pub from_plan: String,
    pub to_plan: String,
    pub effective_at: DateTime<Utc>,
    /// Taken at once as an upgrade: the base fee paid in advance is prorated.
    pub prorated: bool,
    /// For a change taken at once: the period's usage when it took effect.
    pub usage_before: Option<BTreeMap<Metric, u64>>,
}

#[derive(sqlx::FromRow)]
struct PlanChangeRow {
    from_plan: String,
    to_plan: String,
    effective_at: DateTime<Utc>,
    prorated: bool,
    usage_before: Option<serde_json::Value>,
}

impl TryFrom<PlanChangeRow> for PlanChange {
    type Error = StoreError;

    fn try_from(row: PlanChangeRow) -> Result<Self, StoreError> {
        let usage_before = row
            .usage_before
            .map(|usage| {
                let usage: BTreeMap<String, String> = serde_json::from_value(usage)
                    .map_err(|e| StoreError::Corrupt(format!("usage_before: {e}")))?;
                usage
                    .into_iter()
                    .map(|(metric, used)| {
                        let used = used
                            .parse()
                            .map_err(|_| StoreError::Corrupt(format!("usage_before: {used}")))?;
                        Ok((metric.parse()?, used))
                    })
                    .collect::<Result<BTreeMap<Metric, u64>, StoreError>>()
            })
            .transpose()?;
        Ok(PlanChange {
            from_plan: row.from_plan,
            to_plan: row.to_plan,
            effective_at: row.effective_at,
            prorated: row.prorated,
            usage_before,
        })
    }
}

/// The tenant's plan changes in the order they took effect, ending with the one still
/// scheduled, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanHistory {
    pub current: String,
    pub changes: Vec<PlanChange>,
}

impl PlanHistory {
    /// The plan in effect just before `at` (`inclusive = false`) or at `at` itself (a
    /// change effective exactly then counts).
    pub fn plan_at(&self, at: DateTime<Utc>, inclusive: bool) -> &str {
        let took_effect = |change: &&PlanChange| {
            if inclusive {
                change.effective_at <= at
            } else {
                change.effective_at < at
            }
        };
        if let Some(last) = self.changes.iter().rev().find(took_effect) {
            return &last.to_plan;
        }
        match self.changes.first() {
            Some(first) => &first.from_plan,
            None => &self.current,
        }
    }

    /// The changes that took effect in `[start, end)` with the usage they found.
    pub fn usage_splits_between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Iterator<Item = (&PlanChange, &BTreeMap<Metric, u64>)> {
        self.changes
            .iter()
            .filter(move |c| c.effective_at >= start && c.effective_at < end)
            .filter_map(|c| c.usage_before.as_ref().map(|usage| (c, usage)))
    }

    /// The prorated changes that took effect in `[start, end)`.
    pub fn prorated_between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Iterator<Item = &PlanChange> {
        self.changes
            .iter()
            .filter(move |c| c.prorated && c.effective_at >= start && c.effective_at < end)
    }
}

pub async fn load(conn: &mut PgConnection, tenant: TenantId) -> Result<PlanHistory, StoreError> {
    let rows: Vec<PlanChangeRow> = sqlx::query_as(
        "SELECT from_plan, to_plan, effective_at, usage_before, \
                (effective = 'now' AND to_state = 'upgrading') AS prorated \
         FROM tenant_transitions \
         WHERE tenant_id = $1 AND kind = 'plan_change' AND status = 'completed' \
           AND effective_at IS NOT NULL \
         ORDER BY effective_at, completed_at",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *conn)
    .await?;
    let mut changes = rows
        .into_iter()
        .map(PlanChange::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let record = tenancy::tenants::get(&mut *conn, tenant).await?;
    let current = record.plan_code;
    if let Some((to_plan, effective_at)) = record.scheduled_plan {
        changes.push(PlanChange {
            from_plan: current.clone(),
            to_plan,
            effective_at,
            prorated: false,
            usage_before: None,
        });
    }
    Ok(PlanHistory { current, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn change(from: &str, to: &str, second: i64, prorated: bool) -> PlanChange {
        PlanChange {
            from_plan: from.into(),
            to_plan: to.into(),
            effective_at: at(second),
            prorated,
            usage_before: None,
        }
    }

    #[test]
    fn without_changes_the_current_plan_is_in_effect_throughout() {
        let history = PlanHistory {
            current: "pro".into(),
            changes: vec![],
        };
        assert_eq!(history.plan_at(at(0), false), "pro");
        assert_eq!(history.plan_at(at(10), true), "pro");
    }

    #[test]
    fn each_instant_has_the_plan_of_the_last_change_before_it() {
        let history = PlanHistory {
            current: "enterprise".into(),
            changes: vec![
                change("starter", "pro", 100, true),
                change("pro", "enterprise", 200, true),
            ],
        };
        assert_eq!(history.plan_at(at(50), false), "starter");
        assert_eq!(history.plan_at(at(100), false), "starter");
        assert_eq!(history.plan_at(at(100), true), "pro");
        assert_eq!(history.plan_at(at(150), true), "pro");
        assert_eq!(history.plan_at(at(300), false), "enterprise");
        let prorated: Vec<_> = history.prorated_between(at(0), at(200)).collect();
        assert_eq!(prorated, [&history.changes[0]]);
    }

    #[test]
    fn a_downgrade_at_the_boundary_is_not_in_effect_before_it() {
        let history = PlanHistory {
            current: "pro".into(),
            changes: vec![change("pro", "starter", 1000, false)],
        };
        assert_eq!(history.plan_at(at(1000), false), "pro");
        assert_eq!(history.plan_at(at(1000), true), "starter");
        assert_eq!(history.prorated_between(at(0), at(2000)).count(), 0);
    }
}
