//! The plan catalogue.

use std::collections::BTreeMap;

use saas_core::{Currency, Metric};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::StoreError;

/// One step of graduated overage pricing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PriceTier {
    /// Upper bound of this tier, in overage units counted from the end of `included`;
    /// `null` for the last, unbounded tier.
    pub up_to: Option<u64>,
    /// Minor units charged per `unit_size` units within this tier.
    pub unit_amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricTerms {
    /// Units per billing period covered by the base fee.
    pub included: u64,
    /// Hard cap per billing period; `null` where usage past `included` is billed.
    pub limit: Option<u64>,
    /// Overage prices are quoted per this many units.
    pub unit_size: u64,
    /// Graduated overage tiers, ascending.
    pub tiers: Vec<PriceTier>,
    /// Events (rows, whatever their values) that may be metered per billing period.
    pub event_limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub code: String,
    pub name: String,
    pub currency: Currency,
    /// Flat fee per billing period, in minor units.
    pub base_fee: i64,
    #[serde(skip)]
    pub rank: i32,
    pub metrics: BTreeMap<Metric, MetricTerms>,
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    code: String,
    name: String,
    currency: String,
    base_fee: i64,
    rank: i32,
}

#[derive(sqlx::FromRow, Deserialize)]
pub(crate) struct PlanMetricRow {
    pub(crate) plan_code: String,
    pub(crate) metric: String,
    pub(crate) included: i64,
    pub(crate) hard_limit: Option<i64>,
    pub(crate) unit_size: i64,
    pub(crate) tiers: sqlx::types::Json<Vec<PriceTier>>,
    pub(crate) event_limit: i64,
}

/// Every plan, cheapest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Plan>, StoreError> {
    let plans: Vec<PlanRow> =
        sqlx::query_as("SELECT code, name, currency, base_fee, rank FROM plans ORDER BY rank")
            .fetch_all(&mut *conn)
            .await?;
    let metrics: Vec<PlanMetricRow> = sqlx::query_as(
        "SELECT plan_code, metric, included, hard_limit, unit_size, tiers, event_limit \
         FROM plan_metrics",
    )
    .fetch_all(&mut *conn)
    .await?;

    let mut result = Vec::with_capacity(plans.len());
    for row in plans {
        let currency = Currency::new(&row.currency)
            .ok_or_else(|| StoreError::Corrupt(format!("currency {:?}", row.currency)))?;
        let mut plan = Plan {
            code: row.code,
            name: row.name,
            currency,
            base_fee: row.base_fee,
            rank: row.rank,
            metrics: BTreeMap::new(),
        };
        for m in metrics.iter().filter(|m| m.plan_code == plan.code) {
            plan.metrics.insert(m.metric.parse()?, to_terms(m)?);
        }
        result.push(plan);
    }
    Ok(result)
}

pub async fn get(conn: &mut PgConnection, code: &str) -> Result<Plan, StoreError> {
    list(conn)
        .await?
        .into_iter()
        .find(|plan| plan.code == code)
        .ok_or(StoreError::NotFound)
}

pub(crate) fn to_terms(row: &PlanMetricRow) -> Result<MetricTerms, StoreError> {
    let non_negative = |value: i64| {
        u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {value}")))
    };
    Ok(MetricTerms {
        included: non_negative(row.included)?,
        limit: row.hard_limit.map(non_negative).transpose()?,
        unit_size: non_negative(row.unit_size)?,
        tiers: row.tiers.0.clone(),
        event_limit: non_negative(row.event_limit)?,
    })
}
