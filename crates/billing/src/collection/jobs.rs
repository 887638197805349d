//! The collection jobs: one per new invoice, one per dunning retry, and the sweep that
//! queues collection again for invoices whose jobs gave up.

use std::time::Duration;

use ::jobs::{Job, JobError, JobHandler, NewJob};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tenancy::{Db, StoreError};
use uuid::Uuid;

use super::Collector;

pub const COLLECT_JOB: &str = "billing.collect";
pub const RETRY_PAYMENT_JOB: &str = "billing.retry_payment";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Payload {
    tenant_id: TenantId,
    invoice_id: Uuid,
    /// For payment retries: which charge of the invoice this job makes (from 2).
    #[serde(default)]
    attempt: Option<i32>,
}

impl Payload {
    pub(super) fn json(
        tenant: TenantId,
        invoice: Uuid,
        attempt: Option<i32>,
    ) -> Result<Value, StoreError> {
        let payload = Payload {
            tenant_id: tenant,
            invoice_id: invoice,
            attempt,
        };
        serde_json::to_value(payload).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn of(job: &Job) -> Result<Payload, JobError> {
        job.payload()
    }
}

/// Queues the collection of a new draft invoice (in the run's transaction).
pub async fn enqueue_collection(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
) -> Result<(), StoreError> {
    let payload = Payload::json(tenant, invoice, None)?;
    jobs::enqueue(
        conn,
        NewJob::new(COLLECT_JOB, payload).dedup_key(invoice.to_string()),
    )
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
    let payload = Payload::json(tenant, invoice, None)?;
    jobs::enqueue(
        conn,
        NewJob::new(COLLECT_JOB, payload).dedup_key(format!("{invoice}:{why}")),
    )
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
            &[COLLECT_JOB, RETRY_PAYMENT_JOB],
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
        let payload = Payload::json(
            TenantId::from_uuid(*tenant),
            *invoice,
            retrying.then_some(attempts + 1),
        )?;
        let kind = if retrying {
            RETRY_PAYMENT_JOB
        } else {
            COLLECT_JOB
        };
        let queued = jobs::enqueue(
            &mut tx,
            NewJob::new(kind, payload).dedup_key(format!("{invoice}:requeued:{hour}")),
        )
        .await?;
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

/// Runs [`Collector::collect`] for a new invoice.
pub struct CollectJob(pub(super) Collector);

#[async_trait]
impl JobHandler for CollectJob {
    fn kind(&self) -> &'static str {
        COLLECT_JOB
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let payload = Payload::of(job)?;
        self.0
            .collect(payload.tenant_id, payload.invoice_id)
            .await
            .map_err(JobError::from)
    }
}

/// Runs one scheduled dunning retry.
pub struct RetryPaymentJob(pub(super) Collector);

#[async_trait]
impl JobHandler for RetryPaymentJob {
    fn kind(&self) -> &'static str {
        RETRY_PAYMENT_JOB
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let payload = Payload::of(job)?;
        let attempt = payload
            .attempt
            .ok_or_else(|| JobError::Permanent("a payment retry without its number".into()))?;
        self.0
            .retry_payment(payload.tenant_id, payload.invoice_id, attempt)
            .await
            .map_err(JobError::from)
    }
}
