//! Collecting invoices through the payment provider, and dunning when a charge fails.
//!
//! The invoice run leaves each invoice of a tenant with a Stripe customer as a `draft`
//! and queues a collection job for it. The job pushes the tenant's drafts to Stripe,
//! oldest first, and charges them:
//!
//! 1. every usage line with an amount becomes a pending invoice item, and the invoice is
//!    created (it takes the pending items, and Stripe puts the subscription's base fee for
//!    the coming period on it); both are found again by our ids in their metadata, so a
//!    job killed anywhere and run again makes no twin;
//! 2. our invoice takes over the lines Stripe added (the subscription's base fee as
//!    Stripe bills it, prorations of a plan change), so that both carry the same lines and
//!    total; an invoice whose usage lines Stripe did not take exactly is never charged;
//! 3. the invoice is charged to the default payment method.
//!
//! A declined charge starts dunning: retries at the configured offsets from the first
//! failure, each a job of its own keyed by the attempt number, so it runs once. A hard
//! decline (a lost or stolen card, ...) is not retried. When dunning ends unpaid the
//! tenant is suspended through the lifecycle, free to reactivate itself by paying; a
//! payment at any point marks the invoice paid and lifts a suspension that dunning made.
//!
//! Only one collection, retry or settlement per tenant talks to Stripe at a time (the
//! tenant's payment lock, which a plan change creating a subscription takes too): Stripe
//! sweeps *all* of a customer's pending items into the next invoice it creates, and an
//! invoice must not be charged twice at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs::{Job, JobError, JobHandler, NewJob};
use lifecycle::{Change, TransitionError, TransitionRequest};
use payments::{
    Attempt, ChargeLine, ChargeOutcome, LineOrigin, PaymentError, PaymentProvider, ProviderInvoice,
};
use saas_core::{TenantId, TenantState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tenancy::audit::Actor;
use tenancy::{Db, StoreError};
use uuid::Uuid;

pub const COLLECT_JOB: &str = "billing.collect";
pub const RETRY_PAYMENT_JOB: &str = "billing.retry_payment";

/// The actor dunning acts as in transitions and the audit log.
const DUNNING: Actor = Actor::System("dunning");

/// Decline codes that retrying cannot turn into a payment (Stripe's "do not try again"
/// codes): the card is gone, or the bank said never.
const HARD_DECLINES: &[&str] = &[
    "do_not_honor_permanently",
    "do_not_try_again",
    "expired_card",
    "fraudulent",
    "incorrect_number",
    "invalid_account",
    "lost_card",
    "merchant_blacklist",
    "pickup_card",
    "restricted_card",
    "revocation_of_all_authorizations",
    "revocation_of_authorization",
    "security_violation",
    "stolen_card",
];

pub fn is_hard_decline(code: &str) -> bool {
    HARD_DECLINES.contains(&code)
}

/// When failed charges are tried again: offsets from the first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DunningSchedule {
    pub retries: Vec<Duration>,
}

/// What dunning does after the `attempts`-th charge of an invoice failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Charge again at this time.
    RetryAt(DateTime<Utc>),
    /// Retries are used up: suspend the tenant.
    Exhausted,
    /// Not worth retrying: suspend the tenant now.
    HardDecline,
}

impl DunningSchedule {
    /// Pure: the step after charge number `attempts` (counted from 1) failed with
    /// `code`, dunning having started at `first_failed_at`.
    pub fn after_failure(
        &self,
        attempts: i32,
        code: &str,
        first_failed_at: DateTime<Utc>,
    ) -> NextStep {
        if is_hard_decline(code) {
            return NextStep::HardDecline;
        }
        let retries_made = usize::try_from(attempts - 1).unwrap_or(0);
        match self.retries.get(retries_made) {
            Some(offset) => NextStep::RetryAt(
                first_failed_at + chrono::TimeDelta::from_std(*offset).unwrap_or_default(),
            ),
            None => NextStep::Exhausted,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    tenant_id: TenantId,
    invoice_id: Uuid,
    /// For payment retries: which charge of the invoice this job makes (from 2).
    #[serde(default)]
    attempt: Option<i32>,
}

impl Payload {
    fn json(tenant: TenantId, invoice: Uuid, attempt: Option<i32>) -> Result<Value, StoreError> {
        let payload = Payload {
            tenant_id: tenant,
            invoice_id: invoice,
            attempt,
        };
        serde_json::to_value(payload).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn of(job: &Job) -> Result<Payload, JobError> {
        serde_json::from_value(job.payload.clone())
            .map_err(|error| JobError::Permanent(format!("bad payload: {error}")))
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
    let stalled: Vec<(Uuid, Uuid, String, i32)> = sqlx::query_as(
        "SELECT i.tenant_id, i.id, i.status, i.payment_attempts FROM invoices i \
         WHERE i.created_at < $1 AND ( \
               i.status = 'draft' \
            OR (i.status = 'open' AND i.stripe_invoice_id IS NOT NULL AND i.payment_attempts = 0) \
            OR (i.status = 'open' AND i.dunning = 'retrying' AND i.next_attempt_at < $1)) \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'pending' \
                           AND j.kind IN ('billing.collect', 'billing.retry_payment') \
                           AND j.payload->>'invoice_id' = i.id::text) \
         ORDER BY i.created_at LIMIT 1000",
    )
    .bind(before)
    .fetch_all(&mut *tx)
    .await?;
    let mut requeued = 0;
    for (tenant, invoice, status, attempts) in &stalled {
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

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// Stripe's invoice does not carry our usage lines exactly: never charged, for an
    /// operator to look at.
    #[error("invoice {invoice} differs at Stripe: {detail}")]
    Mismatch { invoice: Uuid, detail: String },
    #[error("the tenant has no Stripe customer")]
    NoCustomer,
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

impl From<sqlx::Error> for CollectError {
    fn from(error: sqlx::Error) -> Self {
        CollectError::Store(error.into())
    }
}

impl From<CollectError> for JobError {
    fn from(error: CollectError) -> Self {
        match &error {
            CollectError::Payment(payment) if !payment.is_retryable() => {
                JobError::Permanent(error.to_string())
            }
            CollectError::Mismatch { .. } | CollectError::NoCustomer => {
                JobError::Permanent(error.to_string())
            }
            _ => JobError::Retry(error.to_string()),
        }
    }
}

/// Pushes, charges and dunns invoices. Cheap to clone.
#[derive(Clone)]
pub struct Collector {
    db: Db,
    payments: Arc<dyn PaymentProvider>,
    schedule: DunningSchedule,
}

#[derive(sqlx::FromRow)]
struct InvoiceState {
    id: Uuid,
    status: String,
    currency: String,
    stripe_invoice_id: Option<String>,
    payment_attempts: i32,
    first_failed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct LineRow {
    position: i32,
    kind: String,
    quantity: String,
    amount: i64,
    description: String,
}

/// How a settlement by the tenant ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Nothing is left unpaid.
    Settled { paid: usize },
    /// A charge was declined; nothing after it was tried.
    Declined { invoice: Uuid, code: String },
}

impl Collector {
    pub fn new(db: Db, payments: Arc<dyn PaymentProvider>, schedule: DunningSchedule) -> Self {
        Self {
            db,
            payments,
            schedule,
        }
    }

    /// The job handlers: collection and payment retries.
    pub fn jobs(&self) -> (CollectJob, RetryPaymentJob) {
        (CollectJob(self.clone()), RetryPaymentJob(self.clone()))
    }

    /// Pushes every draft of the tenant to Stripe, oldest first, then charges every
    /// pushed invoice not charged yet, then makes sure dunning's verdict on `invoice`
    /// stands. Another invoice that cannot be pushed is left for its own job (and
    /// logged); only `invoice`'s own failure fails this job.
    pub async fn collect(&self, tenant: TenantId, invoice: Uuid) -> Result<(), CollectError> {
        let (customer, subscription) = self.stripe_ids(tenant).await?;
        let lock = self.lock(tenant).await?;
        let drafts = self.drafts(tenant).await?;
        for draft in drafts {
            let pushed = self
                .push(tenant, draft, &customer, subscription.as_deref())
                .await;
            match pushed {
                Ok(()) => {}
                Err(error) if draft == invoice => return Err(error),
                Err(error) => {
                    tracing::warn!(%tenant, invoice = %draft, %error, "could not push another draft");
                }
            }
        }
        for state in self.uncharged(tenant).await? {
            self.charge(tenant, &state, "collect").await?;
        }
        lock.commit().await?;
        self.uphold_dunning(tenant, invoice).await
    }

    /// The tenant's drafts, oldest first.
    async fn drafts(&self, tenant: TenantId) -> Result<Vec<Uuid>, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let drafts = sqlx::query_scalar(
            "SELECT id FROM invoices WHERE tenant_id = $1 AND status = 'draft' \
             ORDER BY period_start",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(drafts)
    }

    /// The tenant's pushed invoices never charged, oldest first.
    async fn uncharged(&self, tenant: TenantId) -> Result<Vec<InvoiceState>, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let uncharged = sqlx::query_as(UNCHARGED)
            .bind(tenant.as_uuid())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(uncharged)
    }

    /// Charge number `attempt` of a dunning invoice; a no-op when it was made already.
    pub async fn retry_payment(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        attempt: i32,
    ) -> Result<(), CollectError> {
        let lock = self.lock(tenant).await?;
        let state = self.invoice_state(tenant, invoice).await?;
        if state.status == "open" && state.payment_attempts == attempt - 1 {
            self.charge(tenant, &state, "retry").await?;
        }
        lock.commit().await?;
        self.uphold_dunning(tenant, invoice).await
    }

    /// Charges every open invoice of the tenant, oldest first, with its default payment
    /// method (a new card, typically): the payment a suspended tenant makes to come back.
    pub async fn settle(&self, tenant: TenantId) -> Result<Settlement, CollectError> {
        let lock = self.lock(tenant).await?;
        let open: Vec<InvoiceState> = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let rows = sqlx::query_as(OPEN_IN_STRIPE)
                .bind(tenant.as_uuid())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows
        };
        let mut paid = 0;
        for state in open {
            match self.charge(tenant, &state, "settle").await? {
                ChargeOutcome::Paid => paid += 1,
                ChargeOutcome::Closed { .. } => {}
                ChargeOutcome::Declined { code, .. } => {
                    lock.commit().await?;
                    return Ok(Settlement::Declined {
                        invoice: state.id,
                        code,
                    });
                }
            }
        }
        lock.commit().await?;
        Ok(Settlement::Settled { paid })
    }

    /// The tenant's payment lock (see `tenancy::payment_lock`): also keeps two
    /// collections, retries or settlements of one tenant from charging at once.
    async fn lock(&self, tenant: TenantId) -> Result<tenancy::DbTx, CollectError> {
        Ok(tenancy::payment_lock::acquire(&self.db, tenant).await?)
    }

    async fn stripe_ids(&self, tenant: TenantId) -> Result<(String, Option<String>), CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let record = tenancy::tenants::get(&mut tx, tenant).await?;
        tx.commit().await?;
        let customer = record.stripe_customer_id.ok_or(CollectError::NoCustomer)?;
        Ok((customer, record.stripe_subscription_id))
    }

    async fn invoice_state(
        &self,
        tenant: TenantId,
        invoice: Uuid,
    ) -> Result<InvoiceState, CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        let state = sqlx::query_as(INVOICE_STATE)
            .bind(tenant.as_uuid())
            .bind(invoice)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(state)
    }

    /// Step 1 and 2 of the module comment for one draft.
    async fn push(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        customer: &str,
        subscription: Option<&str>,
    ) -> Result<(), CollectError> {
        let (state, lines, attempt) = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let state: InvoiceState = sqlx::query_as(INVOICE_STATE)
                .bind(tenant.as_uuid())
                .bind(invoice)
                .fetch_one(&mut *tx)
                .await?;
            let lines: Vec<LineRow> = sqlx::query_as(
                "SELECT position, kind, quantity::text AS quantity, amount, description FROM invoice_lines \
                 WHERE invoice_id = $1 ORDER BY position",
            )
            .bind(invoice)
            .fetch_all(&mut *tx)
            .await?;
            // Recorded before the first call to Stripe: any later push of this invoice
            // (by whichever job) looks for what an earlier one may have made.
            let first = sqlx::query(
                "UPDATE invoices SET push_started_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND push_started_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(invoice)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            tx.commit().await?;
            let attempt = if first {
                Attempt::First
            } else {
                Attempt::Retry
            };
            (state, lines, attempt)
        };
        if state.status != "draft" {
            return Ok(());
        }
        // With a subscription, Stripe bills the base fee itself; without, it is ours to push.
        let pushed: Vec<ChargeLine> = lines
            .iter()
            .filter(|line| line.amount != 0 && (subscription.is_none() || line.kind != "base_fee"))
            .map(|line| ChargeLine {
                reference: line_reference(invoice, line.position),
                amount: line.amount,
                // Metric and unit price are in the rated description; the quantity too here.
                description: format!("{}: quantity {}", line.description, line.quantity),
                subscription: subscription.map(str::to_owned),
            })
            .collect();
        let existing = if attempt == Attempt::Retry {
            self.payments
                .find_invoice(customer, &invoice.to_string())
                .await?
        } else {
            None
        };
        let stripe_invoice = match existing {
            Some(found) => found,
            None => {
                for line in &pushed {
                    self.payments
                        .ensure_invoice_item(customer, &state.currency, line, attempt)
                        .await?;
                }
                // Looked for above already.
                self.payments
                    .ensure_invoice(customer, subscription, &invoice.to_string(), Attempt::First)
                    .await?
            }
        };
        let adopted = adopt_provider_lines(invoice, &pushed, &stripe_invoice)?;
        let mut tx = self.db.tenant_tx(tenant).await?;
        let moved = sqlx::query(
            "UPDATE invoices SET status = 'open', stripe_invoice_id = $3, total = $4 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'draft'",
        )
        .bind(tenant.as_uuid())
        .bind(invoice)
        .bind(&stripe_invoice.id)
        .bind(stripe_invoice.total)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 1 {
            replace_provider_lines(&mut tx, tenant, invoice, &lines, &adopted).await?;
        }
        tx.commit().await?;
        metrics::counter!("invoices_pushed_total").increment(moved);
        tracing::info!(%tenant, %invoice, stripe_invoice = %stripe_invoice.id,
            total = stripe_invoice.total, "invoice pushed to Stripe");
        Ok(())
    }

    /// One charge of an open invoice; records the outcome and what dunning does next.
    async fn charge(
        &self,
        tenant: TenantId,
        state: &InvoiceState,
        why: &str,
    ) -> Result<ChargeOutcome, CollectError> {
        let Some(stripe_id) = &state.stripe_invoice_id else {
            return Err(CollectError::Mismatch {
                invoice: state.id,
                detail: "open without a Stripe invoice".into(),
            });
        };
        let number = state.payment_attempts + 1;
        let key = format!("charge-{}-{number}-{why}", state.id);
        let outcome = match self.payments.charge_invoice(stripe_id, &key).await {
            Ok(outcome) => outcome,
            // Refused without a decline (no payment method, authentication needed, ...):
            // for dunning that is a failed charge like any other.
            Err(PaymentError::Refused(message)) => ChargeOutcome::Declined {
                code: "payment_refused".into(),
                message,
            },
            Err(other) => return Err(other.into()),
        };
        match &outcome {
            ChargeOutcome::Paid => {
                self.mark_paid(tenant, state.id, number).await?;
                metrics::counter!("invoice_charges_total", "outcome" => "paid").increment(1);
            }
            ChargeOutcome::Declined { code, message } => {
                metrics::counter!("invoice_charges_total", "outcome" => "declined").increment(1);
                let first = state.first_failed_at.unwrap_or_else(Utc::now);
                let next = self.schedule.after_failure(number, code, first);
                tracing::warn!(%tenant, invoice = %state.id, attempt = number, code, ?next,
                    "charge declined");
                self.record_failure(
                    tenant,
                    state.id,
                    number,
                    first,
                    &format!("{code}: {message}"),
                    &next,
                )
                .await?;
            }
            ChargeOutcome::Closed { status } => {
                // Voided or written off at Stripe: ours follows, and dunning ends.
                let mut tx = self.db.tenant_tx(tenant).await?;
                close(&mut tx, tenant, state.id, status).await?;
                tx.commit().await?;
            }
        }
        Ok(outcome)
    }

    async fn record_failure(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        number: i32,
        first_failed_at: DateTime<Utc>,
        error: &str,
        next: &NextStep,
    ) -> Result<(), CollectError> {
        let (dunning, next_at) = match next {
            NextStep::RetryAt(at) => ("retrying", Some(*at)),
            NextStep::Exhausted => ("exhausted", None),
            NextStep::HardDecline => ("hard_decline", None),
        };
        let mut tx = self.db.tenant_tx(tenant).await?;
        let recorded = sqlx::query(
            "UPDATE invoices SET payment_attempts = $3, first_failed_at = $4, \
                 last_payment_error = $5, dunning = $6, next_attempt_at = $7 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'open' AND payment_attempts = $3 - 1",
        )
        .bind(tenant.as_uuid())
        .bind(invoice)
        .bind(number)
        .bind(first_failed_at)
        .bind(error)
        .bind(dunning)
        .bind(next_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 1
            && let Some(at) = next_at
        {
            let payload = Payload::json(tenant, invoice, Some(number + 1))?;
            jobs::enqueue(
                &mut tx,
                NewJob::new(RETRY_PAYMENT_JOB, payload)
                    .dedup_key(format!("{invoice}:{}", number + 1))
                    .run_at(at),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks the invoice paid (forward only: never out of `void` or `uncollectible`).
    async fn mark_paid(
        &self,
        tenant: TenantId,
        invoice: Uuid,
        attempts: i32,
    ) -> Result<(), CollectError> {
        let mut tx = self.db.tenant_tx(tenant).await?;
        mark_paid(&mut tx, tenant, invoice, Some(attempts)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Carries dunning's verdict over to the tenant. When `invoice` ran out of retries
    /// (or met a hard decline), the tenant is suspended, free to come back by paying;
    /// once per invoice, so that an operator who lets the tenant back in without paying
    /// is not overruled. When nothing dunning gave up on is left unpaid, a suspension
    /// that dunning made is lifted.
    pub async fn uphold_dunning(
        &self,
        tenant: TenantId,
        invoice: Uuid,
    ) -> Result<(), CollectError> {
        let (state, gave_up_on_this, any_unpaid, suspended_by_dunning) = {
            let mut tx = self.db.tenant_tx(tenant).await?;
            let record = tenancy::tenants::get(&mut tx, tenant).await?;
            let gave_up_on_this: Option<String> = sqlx::query_scalar(
                "SELECT dunning FROM invoices WHERE tenant_id = $1 AND id = $2 \
                   AND status = 'open' AND dunning IN ('exhausted', 'hard_decline') \
                   AND dunning_suspended_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(invoice)
            .fetch_optional(&mut *tx)
            .await?;
            let any_unpaid: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM invoices WHERE tenant_id = $1 AND status = 'open' \
                   AND dunning IN ('exhausted', 'hard_decline'))",
            )
            .bind(tenant.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
            let last_suspension_actor: Option<String> = sqlx::query_scalar(
                "SELECT actor FROM tenant_transitions WHERE tenant_id = $1 AND kind = 'suspension' \
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            (
                record.state,
                gave_up_on_this,
                any_unpaid,
                last_suspension_actor.as_deref() == Some(DUNNING.as_text().as_str()),
            )
        };
        let (change, reason) = match (state, &gave_up_on_this) {
            // Mid-transition: come back when it is over.
            (TenantState::Upgrading | TenantState::Downgrading, Some(_)) => {
                return Err(CollectError::Transition(TransitionError::InProgress));
            }
            (_, Some(why)) => (
                Change::Suspend {
                    tenant_may_reactivate: true,
                },
                format!("invoice {invoice} unpaid ({why})"),
            ),
            (TenantState::Suspended, None) if suspended_by_dunning && !any_unpaid => {
                (Change::Reactivate, "unpaid invoices settled".to_owned())
            }
            _ => return Ok(()),
        };
        let suspending = gave_up_on_this.is_some();
        if !(suspending && state != TenantState::Active) {
            let request = TransitionRequest {
                tenant_id: tenant,
                change,
                actor: DUNNING,
                reason: Some(reason),
                request_id: None,
                idempotency_key: None,
            };
            match lifecycle::transitions::begin(&self.db, &request).await {
                Ok(transition) => {
                    tracing::info!(%tenant, to = %transition.to, "dunning moved the tenant")
                }
                // Moved meanwhile by someone else (an operator, the tenant): theirs stands.
                Err(TransitionError::Invalid(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        if suspending {
            let mut tx = self.db.tenant_tx(tenant).await?;
            sqlx::query(
                "UPDATE invoices SET dunning_suspended_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND dunning_suspended_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(invoice)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

const INVOICE_STATE: &str = "SELECT id, status, currency, stripe_invoice_id, \
     payment_attempts, first_failed_at FROM invoices WHERE tenant_id = $1 AND id = $2";
const UNCHARGED: &str = "SELECT id, status, currency, stripe_invoice_id, \
     payment_attempts, first_failed_at FROM invoices WHERE tenant_id = $1 \
     AND status = 'open' AND stripe_invoice_id IS NOT NULL AND payment_attempts = 0 \
     ORDER BY period_start";
const OPEN_IN_STRIPE: &str = "SELECT id, status, currency, stripe_invoice_id, \
     payment_attempts, first_failed_at FROM invoices WHERE tenant_id = $1 \
     AND status = 'open' AND stripe_invoice_id IS NOT NULL ORDER BY period_start";

/// Marks an invoice paid unless it is paid or void already (an uncollectible one may
/// still be paid, as at Stripe); true when it moved. `attempts` records the charge that
/// paid it, when it was ours.
pub async fn mark_paid(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    attempts: Option<i32>,
) -> Result<bool, StoreError> {
    let moved = sqlx::query(
        "UPDATE invoices SET status = 'paid', paid_at = now(), next_attempt_at = NULL, \
             payment_attempts = COALESCE($3, payment_attempts) \
         WHERE tenant_id = $1 AND id = $2 AND status IN ('draft', 'open', 'uncollectible')",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(attempts)
    .execute(conn)
    .await?
    .rows_affected();
    if moved == 1 {
        metrics::counter!("invoices_paid_total").increment(1);
    }
    Ok(moved == 1)
}

/// Closes an invoice without payment as Stripe did (`void` is final; an
/// `uncollectible` one may still be paid later); true when it moved.
pub async fn close(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    status: &str,
) -> Result<bool, StoreError> {
    let from: Vec<String> = match status {
        "void" => vec!["open".into(), "uncollectible".into()],
        "uncollectible" => vec!["open".into()],
        _ => return Ok(false),
    };
    let moved = sqlx::query(
        "UPDATE invoices SET status = $3, next_attempt_at = NULL \
         WHERE tenant_id = $1 AND id = $2 AND status = ANY($4)",
    )
    .bind(tenant.as_uuid())
    .bind(invoice)
    .bind(status)
    .bind(&from)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

fn line_reference(invoice: Uuid, position: i32) -> String {
    format!("{invoice}:{position}")
}

/// The lines our invoice takes over from Stripe's: what Stripe added beside our own
/// (the subscription's base fee, prorations), checked against what we pushed.
fn adopt_provider_lines(
    invoice: Uuid,
    pushed: &[ChargeLine],
    stripe: &ProviderInvoice,
) -> Result<Vec<(String, i64, String)>, CollectError> {
    let mismatch = |detail: String| CollectError::Mismatch { invoice, detail };
    let ours: Vec<(&String, i64)> = stripe
        .lines
        .iter()
        .filter_map(|line| match &line.origin {
            LineOrigin::Ours(reference) => Some((reference, line.amount)),
            _ => None,
        })
        .collect();
    if ours.len() != pushed.len() {
        return Err(mismatch(format!(
            "{} of our lines at Stripe, {} pushed",
            ours.len(),
            pushed.len()
        )));
    }
    for line in pushed {
        if !ours.contains(&(&line.reference, line.amount)) {
            return Err(mismatch(format!(
                "line {} missing or changed",
                line.reference
            )));
        }
    }
    let adopted: Vec<(String, i64, String)> = stripe
        .lines
        .iter()
        .filter_map(|line| match line.origin {
            LineOrigin::Subscription => {
                Some(("base_fee".to_owned(), line.amount, line.description.clone()))
            }
            LineOrigin::Other => Some((
                "proration".to_owned(),
                line.amount,
                line.description.clone(),
            )),
            LineOrigin::Ours(_) => None,
        })
        .collect();
    Ok(adopted)
}

/// Replaces our base-fee line with the lines adopted from Stripe, so that our invoice
/// carries what Stripe's does; the total was set from Stripe's in the same transaction
/// and is checked here to be the sum of the lines.
async fn replace_provider_lines(
    conn: &mut PgConnection,
    tenant: TenantId,
    invoice: Uuid,
    lines: &[LineRow],
    adopted: &[(String, i64, String)],
) -> Result<(), CollectError> {
    if !adopted.is_empty() {
        // Stripe's subscription line replaces ours; without one, ours was pushed as is.
        if adopted.iter().any(|(kind, _, _)| kind == "base_fee") {
            sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1 AND kind = 'base_fee'")
                .bind(invoice)
                .execute(&mut *conn)
                .await?;
        }
        let mut position = lines.iter().map(|l| l.position).max().unwrap_or(0);
        for (kind, amount, description) in adopted {
            position += 1;
            sqlx::query(
                "INSERT INTO invoice_lines (invoice_id, tenant_id, position, kind, metric, tier, \
                                            quantity, unit_amount, unit_size, amount, description) \
                 VALUES ($1, $2, $3, $4, NULL, NULL, 1, $5, 1, $5, $6)",
            )
            .bind(invoice)
            .bind(tenant.as_uuid())
            .bind(position)
            .bind(kind)
            .bind(amount)
            .bind(description)
            .execute(&mut *conn)
            .await?;
        }
    }
    let (sum, total): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(amount), 0)::bigint, (SELECT total FROM invoices WHERE id = $1) \
         FROM invoice_lines WHERE invoice_id = $1",
    )
    .bind(invoice)
    .fetch_one(&mut *conn)
    .await?;
    if sum != total {
        return Err(CollectError::Mismatch {
            invoice,
            detail: format!("Stripe's total {total} is not the sum of the lines, {sum}"),
        });
    }
    Ok(())
}

/// Runs [`Collector::collect`] for a new invoice.
pub struct CollectJob(Collector);

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
pub struct RetryPaymentJob(Collector);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> DunningSchedule {
        DunningSchedule {
            retries: vec![
                Duration::from_secs(3 * 86_400),
                Duration::from_secs(5 * 86_400),
                Duration::from_secs(7 * 86_400),
            ],
        }
    }

    #[test]
    fn soft_declines_are_retried_at_each_offset_then_dunning_is_exhausted() {
        let first = Utc::now();
        let days = |n| first + chrono::TimeDelta::days(n);
        assert_eq!(
            schedule().after_failure(1, "card_declined", first),
            NextStep::RetryAt(days(3))
        );
        assert_eq!(
            schedule().after_failure(2, "insufficient_funds", first),
            NextStep::RetryAt(days(5))
        );
        assert_eq!(
            schedule().after_failure(3, "card_declined", first),
            NextStep::RetryAt(days(7))
        );
        assert_eq!(
            schedule().after_failure(4, "card_declined", first),
            NextStep::Exhausted
        );
    }

    #[test]
    fn hard_declines_are_never_retried() {
        let first = Utc::now();
        for code in [
            "stolen_card",
            "lost_card",
            "expired_card",
            "fraudulent",
            "do_not_try_again",
        ] {
            assert_eq!(
                schedule().after_failure(1, code, first),
                NextStep::HardDecline,
                "{code}"
            );
        }
    }

    #[test]
    fn no_retries_configured_means_the_first_failure_ends_dunning() {
        let empty = DunningSchedule { retries: vec![] };
        assert_eq!(
            empty.after_failure(1, "card_declined", Utc::now()),
            NextStep::Exhausted
        );
    }
}
