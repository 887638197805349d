//! Invoice runs spread over every process's job worker: the scheduler finds the tenants
//! due for an invoice through the due index and queues one job per page of them; any
//! replica's worker runs a job as an invoice run of that page.
//!
//! A job holds a page rather than one tenant so that the page's usage is still read
//! from ClickHouse in one query (see [`super::run`]). The scheduler queues the next
//! round only once the last one has drained, so a slow round is never queued twice.

use std::time::Duration;

use ::jobs::{JobContext, JobError, JobHandler, JobKind, JobOptions};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use metering::ClickHouseSink;
use saas_core::TenantId;
use saas_core::clock::SharedClock;
use serde::{Deserialize, Serialize};
use tenancy::{Db, StoreError};

use super::run::{Collection, Progress, invoice_tenants};

/// Tenants per job: enough that ClickHouse is read a page at a time, few enough that
/// thousands of due tenants spread over every worker.
const TENANTS_PER_JOB: usize = 100;

/// Invoice the ended periods of these tenants (those still due when the job runs).
#[derive(Debug, Serialize, Deserialize)]
pub struct InvoiceTenantsJob {
    pub tenants: Vec<TenantId>,
}

impl JobKind for InvoiceTenantsJob {
    const KIND: &'static str = "billing.invoice_tenants";
}

/// What one round of the scheduler queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// Jobs of the last round are still queued or running: nothing new was queued.
    Busy,
    Queued {
        tenants: usize,
        jobs: usize,
    },
}

/// Queues invoice jobs for every tenant due at `now` less `grace`, unless the last
/// round's jobs have not all run yet.
pub async fn fan_out(db: &Db, now: DateTime<Utc>, grace: Duration) -> Result<FanOut, StoreError> {
    let closed_before = now - chrono::TimeDelta::from_std(grace).unwrap_or_default();
    let mut tx = db.system_tx("invoice fan-out").await?;
    // Two schedulers (an election's short overlap) take turns here, and the second
    // sees the first one's jobs.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('billing.invoice_fan_out'))")
        .execute(&mut *tx)
        .await?;
    if ::jobs::is_queued::<InvoiceTenantsJob>(&mut tx).await? {
        return Ok(FanOut::Busy);
    }
    let due = tenancy::tenants::due_ids(&mut tx, closed_before).await?;
    for page in due.chunks(TENANTS_PER_JOB) {
        let job = InvoiceTenantsJob {
            tenants: page.to_vec(),
        };
        // Another round follows at the next interval: a job that keeps failing gives up
        // soon rather than hold the rounds back.
        job.enqueue(&mut tx, JobOptions::default().max_attempts(3))
            .await?;
    }
    tx.commit().await?;
    Ok(FanOut::Queued {
        tenants: due.len(),
        jobs: due.len().div_ceil(TENANTS_PER_JOB),
    })
}

/// Runs invoice jobs.
pub struct InvoiceRunner {
    db: Db,
    sink: ClickHouseSink,
    clock: SharedClock,
    grace: Duration,
    collection: Collection,
}

impl InvoiceRunner {
    pub fn new(
        db: Db,
        sink: ClickHouseSink,
        clock: SharedClock,
        grace: Duration,
        collection: Collection,
    ) -> Self {
        Self {
            db,
            sink,
            clock,
            grace,
            collection,
        }
    }
}

#[async_trait]
impl JobHandler<InvoiceTenantsJob> for InvoiceRunner {
    async fn run(&self, job: InvoiceTenantsJob, _context: JobContext) -> Result<(), JobError> {
        let closed_before =
            self.clock.now() - chrono::TimeDelta::from_std(self.grace).unwrap_or_default();
        let tenants = {
            let mut tx = self.db.system_tx("invoice job tenants").await?;
            let tenants = tenancy::tenants::due_among(&mut tx, closed_before, &job.tenants).await?;
            tx.commit().await?;
            tenants
        };
        let mut progress = Progress::start();
        let invoiced = invoice_tenants(
            &self.db,
            &self.sink,
            &tenants,
            closed_before,
            self.collection,
            &mut progress,
        )
        .await;
        let report = progress.finish();
        if let Err(error) = invoiced {
            metrics::counter!("invoice_run_errors_total").increment(1);
            return Err(JobError::Retry(error.to_string()));
        }
        if report.failed > 0 {
            // Left due: the next round tries them again, and the log says why.
            tracing::warn!(
                failed = report.failed,
                "tenants of an invoice job not rated"
            );
        }
        Ok(())
    }
}
