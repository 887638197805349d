//! The GDPR erasure job. The tenant is `deleted` and its keys revoked when the erasure is
//! taken; this bills what it used and removes the rest, each step safe to run again:
//!
//! 0. the final invoice, for the usage of the period the tenant left in (billing's
//!    [`FinalBiller`], while the usage is still there to rate);
//! 1. the customer at the payment provider (and with it its cards);
//! 2. usage: the Postgres ledger, then ClickHouse, the delete checked complete;
//! 3. personal data in Postgres: the tenant's name and email, its signup, its key labels,
//!    its notifications (invoices, once kept, are stripped the same way);
//! 4. a deletion record and an audit entry, holding counts and ids only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billing::final_invoice::FinalBiller;
use jobs::{JobContext, JobError, JobHandler};
use lifecycle::deletions::{self, Erased};
use lifecycle::transition_jobs::ErasureJob;
use lifecycle::transitions;
use metering::ClickHouseSink;
use payments::PaymentProvider;
use tenancy::Db;
use tenancy::audit::{self, Actor, AuditEntry};

/// How long the ClickHouse delete may take before the job retries.
const CLICKHOUSE_WAIT: Duration = Duration::from_secs(120);

pub struct ErasureWorkflow {
    db: Db,
    clickhouse: ClickHouseSink,
    payments: Option<Arc<dyn PaymentProvider>>,
    final_invoice: Option<FinalBiller>,
}

impl ErasureWorkflow {
    pub fn new(
        db: Db,
        clickhouse: ClickHouseSink,
        payments: Option<Arc<dyn PaymentProvider>>,
        final_invoice: Option<FinalBiller>,
    ) -> Self {
        Self {
            db,
            clickhouse,
            payments,
            final_invoice,
        }
    }
}

#[async_trait]
impl JobHandler<ErasureJob> for ErasureWorkflow {
    async fn run(&self, job: ErasureJob, _: JobContext) -> Result<(), JobError> {
        self.erase(job).await
    }
}

impl ErasureWorkflow {
    #[tracing::instrument(name = "erasure", skip_all,
        fields(tenant = %payload.tenant_id, transition = %payload.transition_id))]
    async fn erase(&self, payload: ErasureJob) -> Result<(), JobError> {
        let tenant_id = payload.tenant_id;
        let (transition, tenant) = {
            let mut tx = self.db.tenant_tx(tenant_id).await?;
            let transition = transitions::get(&mut tx, tenant_id, payload.transition_id).await?;
            let tenant = tenancy::tenants::get(&mut tx, tenant_id).await?;
            tx.commit().await?;
            (transition, tenant)
        };
        if transition.state == lifecycle::transitions::TransitionStatus::Completed {
            return Ok(());
        }
        tracing::info!(tenant = %tenant_id, transition = %transition.id, "erasure running");

        // Readiness probes are never billed.
        if let Some(final_invoice) = self.final_invoice.as_ref().filter(|_| !tenant.synthetic) {
            final_invoice
                .bill(&tenant, transition.created_at)
                .await
                .map_err(|error| JobError::Retry(format!("the final invoice: {error}")))?;
        }

        let stripe_customer_deleted = match (&self.payments, &tenant.stripe_customer_id) {
            (Some(payments), Some(customer)) => {
                // Every failure is retried (a refused key can be fixed): the erasure must
                // not end with the customer's personal data left at Stripe.
                payments.delete_customer(customer).await.map_err(|error| {
                    JobError::Retry(format!("deleting the Stripe customer: {error}"))
                })?;
                true
            }
            _ => false,
        };
        let ledger_rows = metering::erasure::erase_ledger(&self.db, tenant_id).await?;
        let events = self
            .clickhouse
            .erase_tenant(tenant_id, CLICKHOUSE_WAIT)
            .await
            .map_err(|error| JobError::Retry(error.to_string()))?;

        let mut tx = self.db.tenant_tx(tenant_id).await?;
        let forget_stripe_ids = stripe_customer_deleted || tenant.stripe_customer_id.is_none();
        let stripped = ledger_rows
            + tenancy::tenants::erase_personal(&mut tx, tenant_id, forget_stripe_ids)
                .await?
            + tenancy::api_keys::erase_labels(&mut tx, tenant_id)
                .await?
            + outbox::erase(&mut tx, tenant_id).await?
            // Its endpoints hear of the erasure, then go too.
            + webhooks::erasure::erase_after_notice(&mut tx, tenant_id, chrono::Utc::now())
                .await?
            + billing::invoices::personal_data::erase(&mut tx, tenant_id)
                .await?
            // The signup that became this tenant shares its id.
            + onboarding::store::erase(&mut tx, tenant_id)
                .await?;
        let erased = Erased {
            postgres_rows: stripped,
            clickhouse_events: events,
            stripe_customer_deleted,
        };
        deletions::record(&mut tx, tenant_id, transition.id, erased).await?;
        transitions::mark_completed(&mut tx, transition.id).await?;
        let mut entry =
            AuditEntry::new(Some(tenant_id), Actor::System("lifecycle"), "tenant.erased");
        entry.details = serde_json::json!({
            "transition_id": transition.id,
            "postgres_rows_deleted": stripped,
            "clickhouse_events_deleted": events,
            "stripe_customer_deleted": stripe_customer_deleted,
        });
        audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        metrics::counter!("tenant_erasures_total").increment(1);
        tracing::info!(tenant = %tenant_id, events, rows = stripped, "tenant erased");
        Ok(())
    }
}
