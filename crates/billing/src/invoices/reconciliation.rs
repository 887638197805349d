//! Reconciliation: every period invoice's billed quantities against the usage in
//! ClickHouse, a page of invoices at a time, so that any number of invoices can be
//! checked without one request loading them all. A page costs two Postgres statements
//! and one ClickHouse query, whatever its size.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use metering::ClickHouseSink;
use saas_core::{Metric, TenantId, TenantState};
use serde::Serialize;
use tenancy::Db;
use uuid::Uuid;

use super::run::RunError;

/// Most invoices one page compares.
pub const MAX_PAGE: usize = 1000;

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
    /// Where the next page starts: pass it as `after`. Absent on the last page.
    #[schema(value_type = Option<String>)]
    pub next_after: Option<Uuid>,
}

/// Which invoices a page covers: those (of `tenant`, or all) after `after` in id order,
/// at most `limit` (1 to [`MAX_PAGE`]).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub tenant: Option<TenantId>,
    pub after: Option<Uuid>,
    pub limit: usize,
}

/// Compares, per period invoice of the page, the billed quantity of every metric with the
/// period's usage in ClickHouse.
pub async fn reconcile(
    db: &Db,
    sink: &ClickHouseSink,
    page: Page,
) -> Result<Reconciliation, RunError> {
    let limit = page.limit.clamp(1, MAX_PAGE);
    let mut tx = db.system_tx("reconciliation").await?;
    let mut invoices: Vec<(Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT i.id, i.tenant_id, i.period_start FROM invoices i \
         WHERE i.kind = 'period' \
           AND ($1::uuid IS NULL OR i.tenant_id = $1) AND ($2::uuid IS NULL OR i.id > $2) \
         ORDER BY i.id LIMIT $3",
    )
    .bind(page.tenant.map(|t| t.as_uuid()))
    .bind(page.after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    let next_after = (invoices.len() == limit)
        .then(|| invoices.last().map(|(id, _, _)| *id))
        .flatten();
    // Erased tenants' usage is gone by design: nothing to compare their invoices with.
    let tenants: Vec<TenantId> = invoices
        .iter()
        .map(|(_, tenant, _)| TenantId::from_uuid(*tenant))
        .collect();
    let states = tenancy::tenants::states_of(&mut tx, &tenants).await?;
    invoices.retain(|(_, tenant, _)| {
        states.get(&TenantId::from_uuid(*tenant)) != Some(&TenantState::Deleted)
    });
    let ids: Vec<Uuid> = invoices.iter().map(|(id, _, _)| *id).collect();
    let billed_rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT invoice_id, metric, sum(quantity)::text FROM invoice_lines \
         WHERE invoice_id = ANY($1) AND metric IS NOT NULL GROUP BY invoice_id, metric",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut billed: HashMap<Uuid, BTreeMap<String, u128>> = HashMap::new();
    for (invoice, metric, quantity) in billed_rows {
        billed
            .entry(invoice)
            .or_default()
            .insert(metric, quantity.parse().unwrap_or(u128::MAX));
    }
    let periods: Vec<(TenantId, DateTime<Utc>)> = invoices
        .iter()
        .map(|(_, tenant, start)| (TenantId::from_uuid(*tenant), *start))
        .collect();
    let usage = sink.period_totals_of(&periods).await?;

    let mut mismatches = Vec::new();
    for (invoice_id, tenant_id, period_start) in &invoices {
        let billed = billed.get(invoice_id);
        let used = usage.get(&(TenantId::from_uuid(*tenant_id), *period_start));
        for metric in Metric::ALL {
            let b = billed
                .and_then(|b| b.get(metric.as_str()))
                .copied()
                .unwrap_or(0);
            let u = used.and_then(|u| u.get(&metric)).copied().unwrap_or(0);
            if b != u {
                mismatches.push(Mismatch {
                    invoice_id: *invoice_id,
                    tenant_id: *tenant_id,
                    metric: metric.as_str().to_owned(),
                    billed: u64::try_from(b).unwrap_or(u64::MAX),
                    usage: u64::try_from(u).unwrap_or(u64::MAX),
                });
            }
        }
    }
    Ok(Reconciliation {
        invoices_checked: invoices.len(),
        mismatches,
        next_after,
    })
}
