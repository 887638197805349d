//! The GDPR erasure job. The tenant is `deleted` and its keys revoked when the erasure is
//! taken; this bills what it used and removes the rest, each step safe to run again:
//!
//! 0. the final invoice, for the usage of the period the tenant left in (billing does it,
//!    through [`FinalInvoice`], while the usage is still there to rate);
//! 1. the customer at the payment provider (and with it its cards);
//! 2. usage: the Postgres ledger, then ClickHouse, the delete checked complete;
//! 3. personal data in Postgres: the tenant's name and email, its signup, its key labels,
//!    its notifications (invoices, once kept, are stripped the same way);
//! 4. a deletion record and an audit entry, holding counts and ids only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs::{Job, JobError, JobHandler};
use metering::ClickHouseSink;
use payments::PaymentProvider;
use saas_core::{TenantId, TransitionId};
use serde::Deserialize;
use tenancy::Db;
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::tenants::Tenant;

use crate::job_errors::{retry, sql_retry};
use crate::transitions::{self, ERASURE_JOB};

/// How long the ClickHouse delete may take before the job retries.
const CLICKHOUSE_WAIT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
struct Payload {
    transition_id: TransitionId,
    tenant_id: TenantId,
}

/// Bills an erased tenant's last, partial period before its usage is erased. Billing
/// implements it (lifecycle cannot depend on billing, which depends on lifecycle).
#[async_trait]
pub trait FinalInvoice: Send + Sync + 'static {
    /// Makes and collects the invoice for the usage since the last period invoice, up to
    /// `erased_at`; once only, however often it is called. An error is retried.
    async fn bill(&self, tenant: &Tenant, erased_at: DateTime<Utc>) -> Result<(), String>;
}

pub struct ErasureWorkflow {
    db: Db,
    clickhouse: ClickHouseSink,
    payments: Option<Arc<dyn PaymentProvider>>,
    final_invoice: Option<Arc<dyn FinalInvoice>>,
}

impl ErasureWorkflow {
    pub fn new(
        db: Db,
        clickhouse: ClickHouseSink,
        payments: Option<Arc<dyn PaymentProvider>>,
        final_invoice: Option<Arc<dyn FinalInvoice>>,
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
impl JobHandler for ErasureWorkflow {
    fn kind(&self) -> &'static str {
        ERASURE_JOB
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let payload: Payload = serde_json::from_value(job.payload.clone())
            .map_err(|error| JobError::Permanent(format!("bad payload: {error}")))?;
        let tenant_id = payload.tenant_id;
        let (transition, tenant) = {
            let mut tx = self.db.tenant_tx(tenant_id).await.map_err(retry)?;
            let transition = transitions::get(&mut tx, tenant_id, payload.transition_id)
                .await
                .map_err(retry)?;
            let tenant = tenancy::tenants::get(&mut tx, tenant_id)
                .await
                .map_err(retry)?;
            tx.commit().await.map_err(sql_retry)?;
            (transition, tenant)
        };
        if transition.state == "completed" {
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
        let ledger_rows = metering::erasure::erase_ledger(&self.db, tenant_id)
            .await
            .map_err(retry)?;
        let events = self
            .clickhouse
            .erase_tenant(tenant_id, CLICKHOUSE_WAIT)
            .await
            .map_err(|error| JobError::Retry(error.to_string()))?;

        let mut tx = self.db.tenant_tx(tenant_id).await.map_err(retry)?;
        let mut stripped = ledger_rows;
        // The Stripe ids go only with the customer (without billing configured here, they
        // stay, so that the customer can still be deleted later).
        stripped += sqlx::query(
            "UPDATE tenants SET name = 'erased', email = NULL, email_verification_hash = NULL, \
                    stripe_customer_id = CASE WHEN $2 THEN NULL ELSE stripe_customer_id END, \
                    stripe_subscription_id = CASE WHEN $2 THEN NULL ELSE stripe_subscription_id END, \
                    scheduled_plan_code = NULL, scheduled_plan_at = NULL, updated_at = now() \
             WHERE id = $1",
        )
        .bind(tenant_id.as_uuid())
        .bind(stripe_customer_deleted || tenant.stripe_customer_id.is_none())
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?
        .rows_affected();
        for sql in [
            "UPDATE api_keys SET name = 'erased', revoked_at = coalesce(revoked_at, now()) \
             WHERE tenant_id = $1",
            "DELETE FROM notifications WHERE tenant_id = $1",
            // Invoices stay for the legal retention period, without personal data.
            "UPDATE invoices SET billed_name = NULL, billed_email = NULL WHERE tenant_id = $1",
        ] {
            stripped += sqlx::query(sql)
                .bind(tenant_id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(sql_retry)?
                .rows_affected();
        }
        // The signup that became this tenant shares its id.
        stripped += sqlx::query(
            "UPDATE signups SET email = 'erased+' || id::text || '@invalid', company = 'erased', \
                    payment_method = NULL, first_response = NULL, api_key_secret = NULL, \
                    idempotency_key = NULL, idempotency_scope = NULL, token_sealed = NULL, \
                    first_key_sealed = NULL \
             WHERE id = $1",
        )
        .bind(tenant_id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?
        .rows_affected();
        sqlx::query(
            "INSERT INTO tenant_deletions (tenant_id, transition_id, requested_by, requested_at, \
                 completed_at, postgres_rows_deleted, clickhouse_events_deleted, \
                 stripe_customer_deleted) \
             SELECT $1, $2, actor, created_at, now(), $3, $4, $5 FROM tenant_transitions WHERE id = $2 \
             ON CONFLICT (tenant_id) DO UPDATE SET completed_at = now(), \
                 postgres_rows_deleted = tenant_deletions.postgres_rows_deleted + excluded.postgres_rows_deleted, \
                 clickhouse_events_deleted = tenant_deletions.clickhouse_events_deleted + excluded.clickhouse_events_deleted, \
                 stripe_customer_deleted = tenant_deletions.stripe_customer_deleted OR excluded.stripe_customer_deleted",
        )
        .bind(tenant_id.as_uuid())
        .bind(transition.id.as_uuid())
        .bind(i64::try_from(stripped).unwrap_or(i64::MAX))
        .bind(i64::try_from(events).unwrap_or(i64::MAX))
        .bind(stripe_customer_deleted)
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?;
        sqlx::query(
            "UPDATE tenant_transitions SET status = 'completed', completed_at = now() WHERE id = $1",
        )
        .bind(transition.id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(sql_retry)?;
        let mut entry =
            AuditEntry::new(Some(tenant_id), Actor::System("lifecycle"), "tenant.erased");
        entry.details = serde_json::json!({
            "transition_id": transition.id,
            "postgres_rows_deleted": stripped,
            "clickhouse_events_deleted": events,
            "stripe_customer_deleted": stripe_customer_deleted,
        });
        audit::record(&mut tx, &entry).await.map_err(retry)?;
        tx.commit().await.map_err(sql_retry)?;
        metrics::counter!("tenant_erasures_total").increment(1);
        tracing::info!(tenant = %tenant_id, events, rows = stripped, "tenant erased");
        Ok(())
    }
}
