//! The last invoice of an erased tenant: the usage of the periods not invoiced yet (the
//! one it left in, and the one before if its invoice run had not come yet), up to the
//! moment it asked to be erased, with their prorations and no base fee ahead, since it
//! will not be served. Made from the usage counters (exact, and about to be erased) and
//! collected at once, while the Stripe customer still exists. A charge that fails leaves
//! the invoice `uncollectible`: nobody is left to pursue. The invoice is kept, stripped
//! of personal data like every other.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saas_core::{BillingPeriod, Metric};
use tenancy::Db;
use tenancy::tenants::Tenant;
use uuid::Uuid;

use crate::collection::{Collector, close};
use crate::invoice_status::InvoiceStatus;
use crate::invoices::{self, Collection, InvoiceKind, NewInvoice};
use crate::period_invoice::{self, NextPeriod};

pub struct FinalBiller {
    db: Db,
    collector: Option<Collector>,
}

impl FinalBiller {
    pub fn new(db: Db, collector: Option<Collector>) -> Self {
        Self { db, collector }
    }

    /// The invoice of `period` (ending early at `end`), written once.
    async fn invoice(
        &self,
        tenant: &Tenant,
        period: BillingPeriod,
        end: DateTime<Utc>,
        next_period: NextPeriod,
    ) -> Result<(), String> {
        let mut tx = self.db.tenant_tx(tenant.id).await.map_err(text)?;
        let usage: BTreeMap<Metric, u64> =
            metering::counters::period_usage(&mut tx, tenant.id, period.start)
                .await
                .map_err(text)?;
        let composed = period_invoice::compose(&mut tx, tenant, period, &usage, next_period)
            .await
            .map_err(text)?;
        let collection = match self.collector {
            Some(_) => Collection::Stripe,
            None => Collection::Elsewhere,
        };
        let new = NewInvoice {
            kind: InvoiceKind::Period,
            period: BillingPeriod {
                start: period.start,
                end: end.min(period.end),
            },
            plan_code: &composed.plan.code,
            rated: &composed.invoice,
            after_erasure: true,
        };
        invoices::store(&mut tx, tenant, &new, collection)
            .await
            .map_err(text)?;
        tx.commit().await.map_err(text)
    }

    /// Collects every invoice of the tenant not collected yet, now; what cannot be
    /// charged is written off.
    async fn collect(&self, tenant: &Tenant) -> Result<(), String> {
        let Some(collector) = &self.collector else {
            return Ok(());
        };
        let unpaid: Vec<Uuid> = {
            let mut tx = self.db.tenant_tx(tenant.id).await.map_err(text)?;
            let rows = crate::invoices::payment::unsettled(&mut tx, tenant.id)
                .await
                .map_err(text)?;
            tx.commit().await.map_err(text)?;
            rows
        };
        for invoice in unpaid {
            if let Err(error) = collector.collect(tenant.id, invoice).await {
                // Flagged for an operator (too large, differs at Stripe): the erasure
                // does not wait for that. Anything else is tried again.
                match ::jobs::JobError::from(error) {
                    ::jobs::JobError::Permanent(why) => {
                        tracing::error!(tenant = %tenant.id, %invoice, %why,
                            "final invoice not collected; erasing anyway");
                        continue;
                    }
                    other => return Err(other.to_string()),
                }
            }
            let mut tx = self.db.tenant_tx(tenant.id).await.map_err(text)?;
            close(
                &mut tx,
                tenant.id,
                invoice,
                InvoiceStatus::Uncollectible.as_str(),
            )
            .await
            .map_err(text)?;
            tx.commit().await.map_err(text)?;
        }
        Ok(())
    }
}

impl FinalBiller {
    /// Makes and collects the invoice for the usage since the last period invoice, up to
    /// `erased_at`; once only, however often it is called. An error is retried.
    pub async fn bill(&self, tenant: &Tenant, erased_at: DateTime<Utc>) -> Result<(), String> {
        let current = tenant.period_at(erased_at);
        // The period before, when the tenant left before its invoice run came.
        if current.start > tenant.billing_anchor {
            let previous = tenant.period_at(current.start - chrono::TimeDelta::seconds(1));
            // It bills the period the tenant left in ahead, as it would have.
            self.invoice(tenant, previous, previous.end, NextPeriod::BillInAdvance)
                .await?;
        }
        self.invoice(tenant, current, erased_at, NextPeriod::None)
            .await?;
        self.collect(tenant).await
    }
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}
