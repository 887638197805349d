//! The collection jobs: one per new invoice, one per dunning retry, and the sweep that
//! queues collection again for invoices whose jobs gave up.

use std::time::Duration;

use ::jobs::{JobContext, JobError, JobHandler, JobKind, JobOptions, Worker};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::{Db, StoreError};
use uuid::Uuid;

use super::Collector;

/// The collection of a new invoice (or one more, to finish what a payment means).
#[derive(Debug, Serialize, Deserialize)]
pub struct CollectJob {
    pub tenant_id: TenantId,
    pub invoice_id: Uuid,
}

impl JobKind for CollectJob {
    const KIND: &'static str = "billing.collect";

    /// One at a time with the tenant's other jobs (the payment lock would make a second
    /// collection wait anyway, holding a worker).
    fn concurrency_key(&self) -> Option<String> {
        ::jobs::tenant_key(self.tenant_id)
    }
}

/// One scheduled dunning retry: the `attempt`-th charge of the invoice (from 2).
#[derive(Debug, Serialize, Deserialize)]
pub struct RetryPaymentJob {
    pub tenant_id: TenantId,
    pub invoice_id: Uuid,
    pub attempt: i32,
}

impl JobKind for RetryPaymentJob {
    const KIND: &'static str = "billing.retry_payment";

    fn concurrency_key(&self) -> Option<String> {
        ::jobs::tenant_key(self.tenant_id)
    }
}

/// Queues the collection of a new draft invoice (in the run's transaction).
pub async fn enqueue_collection(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
) -> Result<(), StoreError> {
    let job = CollectJob {
        tenant_id: tenant,
        invoice_id: invoice,
    };
    job.enqueue(conn, JobOptions::dedup_key(invoice.to_string()))
        .await?;
    Ok(())
}

/// Queues one more collection of `invoice` (say, to carry out what a payment means for
/// the tenant when doing it at once failed); `why` keeps it apart from the first job.
pub async fn enqueue_follow_up(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    why: &str,
) -> Result<(), StoreError> {
    let job = CollectJob {
        tenant_id: tenant,
        invoice_id: invoice,
    };
    job.enqueue(conn, JobOptions::dedup_key(format!("{invoice}:{why}")))
        .await?;
    Ok(())
}

/// Stalled invoices read per page, and pages per pass (the rest wait for the next).
const STALLED_PAGE: i64 = 1_000;
const MAX_STALLED_PAGES: usize = 10;

/// Queues collection again for invoices whose jobs ran out of attempts (a long Stripe
/// outage, say): drafts and pushed invoices never charged, made over `stalled_after`
/// ago, and dunning retries overdue by as long. At most once an hour per invoice.
pub async fn requeue_stalled(
    db: &Db,
    now: DateTime<Utc>,
    stalled_after: Duration,
) -> Result<usize, StoreError> {
    let before = now - chrono::TimeDelta::from_std(stalled_after).unwrap_or_default();
    let hour = now.format("%Y%m%d%H").to_string();
    let mut tx = db.system_tx("requeue stalled collections").await?;
    let mut stalled = Vec::new();
    let mut after = None;
    // A page at a time, skipping those whose collection job is still waiting to run
    // (in a backoff, say).
    for _ in 0..MAX_STALLED_PAGES {
        let page = crate::invoices::payment::stalled(&mut tx, before, after, STALLED_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.4, last.1));
        let full = page.len() as i64 == STALLED_PAGE;
        let ids: Vec<String> = page.iter().map(|row| row.1.to_string()).collect();
        let waiting = jobs::pending_with(
            &mut tx,
            &[CollectJob::KIND, RetryPaymentJob::KIND],
            "invoice_id",
            &ids,
        )
        .await?;
        stalled.extend(
            page.into_iter()
                .filter(|row| !waiting.contains(&row.1.to_string())),
        );
        if !full {
            break;
        }
    }
    let mut requeued = 0;
    for (tenant, invoice, status, attempts, _) in &stalled {
        let retrying = status == "open" && *attempts > 0;
        let tenant_id = TenantId::from_uuid(*tenant);
        let options = JobOptions::dedup_key(format!("{invoice}:requeued:{hour}"));
        let queued = if retrying {
            let job = RetryPaymentJob {
                tenant_id,
                invoice_id: *invoice,
                attempt: attempts + 1,
            };
            job.enqueue(&mut tx, options).await?
        } else {
            let job = CollectJob {
                tenant_id,
                invoice_id: *invoice,
            };
            job.enqueue(&mut tx, options).await?
        };
        requeued += usize::from(queued.is_some());
    }
    tx.commit().await?;
    if requeued > 0 {
        metrics::counter!("collections_requeued_total").increment(requeued as u64);
        tracing::warn!(
            count = requeued,
            "collections queued again after their jobs gave up"
        );
    }
    Ok(requeued)
}

impl Collector {
    /// Runs this collector's jobs (collections and payment retries) on `worker`.
    pub fn register_with(self, worker: Worker) -> Worker {
        worker
            .register::<CollectJob>(self.clone())
            .register::<RetryPaymentJob>(self)
    }
}

#[async_trait]
impl JobHandler<CollectJob> for Collector {
    async fn run(&self, job: CollectJob, _: JobContext) -> Result<(), JobError> {
        self.collect(job.tenant_id, job.invoice_id)
            .await
            .map_err(JobError::from)
    }
}

#[async_trait]
impl JobHandler<RetryPaymentJob> for Collector {
    async fn run(&self, job: RetryPaymentJob, _: JobContext) -> Result<(), JobError> {
        self.retry_payment(job.tenant_id, job.invoice_id, job.attempt)
            .await
            .map_err(JobError::from)
    }
}
