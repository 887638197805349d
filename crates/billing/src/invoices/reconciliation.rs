//! Reconciliation: every period invoice's billed quantities against the usage in
//! ClickHouse.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use metering::ClickHouseSink;
use saas_core::{Metric, TenantId};
use serde::Serialize;
use tenancy::Db;
use uuid::Uuid;

use super::run::RunError;

/// One difference between what an invoice bills and the usage in ClickHouse.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    #[schema(value_type = String)]
    pub invoice_id: Uuid,
    #[schema(value_type = String)]
    pub tenant_id: Uuid,
    pub metric: String,
    pub billed: u64,
    pub usage: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    pub invoices_checked: usize,
    pub mismatches: Vec<Mismatch>,
}

/// Compares, per period invoice (of `tenant`, or all), the billed quantity of every
/// metric with the period's usage in ClickHouse.
pub async fn reconcile(
    db: &Db,
    sink: &ClickHouseSink,
    tenant: Option<TenantId>,
) -> Result<Reconciliation, RunError> {
    let invoices: Vec<(Uuid, Uuid, DateTime<Utc>)> = {
        let mut tx = db.system_tx("reconciliation").await?;
        // Erased tenants' usage is gone by design: nothing to compare their invoices with.
        let rows = sqlx::query_as(
            "SELECT i.id, i.tenant_id, i.period_start FROM invoices i \
             JOIN tenants t ON t.id = i.tenant_id \
             WHERE i.kind = 'period' AND t.state <> 'deleted' \
               AND ($1::uuid IS NULL OR i.tenant_id = $1) \
             ORDER BY i.tenant_id, i.period_start",
        )
        .bind(tenant.map(|t| t.as_uuid()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows
    };
    let mut mismatches = Vec::new();
    for (invoice_id, tenant_id, period_start) in &invoices {
        let billed: Vec<(String, String)> = {
            let mut tx = db.system_tx("reconciliation lines").await?;
            let rows = sqlx::query_as(
                "SELECT metric, sum(quantity)::text FROM invoice_lines \
                 WHERE invoice_id = $1 AND metric IS NOT NULL GROUP BY metric",
            )
            .bind(invoice_id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        };
        let billed: BTreeMap<String, u128> = billed
            .into_iter()
            .map(|(metric, quantity)| (metric, quantity.parse().unwrap_or(u128::MAX)))
            .collect();
        let usage: BTreeMap<String, u128> = sink
            .period_totals(TenantId::from_uuid(*tenant_id), *period_start)
            .await?
            .into_iter()
            .map(|(metric, total)| (metric.as_str().to_owned(), total))
            .collect();
        for metric in Metric::ALL {
            let name = metric.as_str();
            let (b, u) = (
                billed.get(name).copied().unwrap_or(0),
                usage.get(name).copied().unwrap_or(0),
            );
            if b != u {
                mismatches.push(Mismatch {
                    invoice_id: *invoice_id,
                    tenant_id: *tenant_id,
                    metric: name.to_owned(),
                    billed: u64::try_from(b).unwrap_or(u64::MAX),
                    usage: u64::try_from(u).unwrap_or(u64::MAX),
                });
            }
        }
    }
    Ok(Reconciliation {
        invoices_checked: invoices.len(),
        mismatches,
    })
}
