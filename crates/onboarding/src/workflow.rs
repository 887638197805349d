//! The onboarding job: customer, payment method, first payment, then provisioning.
//!
//! The first payment of a paid plan is the signup invoice (the first period's base fee,
//! billed in advance like every base fee): composed at Stripe and paid before anything
//! is provisioned. A declined payment voids that invoice and deletes the customer, so
//! nothing is left charged, chargeable or provisioned.
//!
//! Each step is idempotent (the payment provider finds what an earlier attempt made;
//! provisioning is one transaction that checks the signup's status under its row lock)
//! and is recorded with its time, so a worker killed anywhere resumes where it stopped
//! and the signup ends with exactly one customer, one paid invoice and one tenant.

use std::sync::Arc;

use jobs::JobError;
use payments::{Attempt, ChargeOutcome, CustomerDetails, PaymentError, PaymentProvider};
use saas_core::{BillingCycle, SignupId, TenantId, TenantState};
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::email_verification;
use tenancy::tenants::NewTenant;
use tenancy::{Db, StoreError};

use crate::store::{self, Signup, SignupStatus, StepOutcome};

/// The steps, in order, as recorded and reported.
pub mod steps {
    pub const CUSTOMER_CREATED: &str = "customer_created";
    pub const PAYMENT_METHOD_ATTACHED: &str = "payment_method_attached";
    pub const PAYMENT_CONFIRMED: &str = "payment_confirmed";
    pub const TENANT_PROVISIONED: &str = "tenant_provisioned";
    pub const WELCOME_QUEUED: &str = "welcome_queued";
    pub const ALL: [&str; 5] = [
        CUSTOMER_CREATED,
        PAYMENT_METHOD_ATTACHED,
        PAYMENT_CONFIRMED,
        TENANT_PROVISIONED,
        WELCOME_QUEUED,
    ];
}

pub struct OnboardingWorkflow {
    pub(crate) db: Db,
    payments: Option<Arc<dyn PaymentProvider>>,
    billing_cycle: BillingCycle,
    /// Fault injection for the crash tests: after recording this step, the run stops
    /// forever, as if the worker had been killed there. Compiled only with the
    /// `fault-injection` feature, which only the tests turn on.
    #[cfg(feature = "fault-injection")]
    pub halt_after: Option<&'static str>,
}

impl OnboardingWorkflow {
    pub fn new(
        db: Db,
        payments: Option<Arc<dyn PaymentProvider>>,
        billing_cycle: BillingCycle,
    ) -> Self {
        Self {
            db,
            payments,
            billing_cycle,
            #[cfg(feature = "fault-injection")]
            halt_after: None,
        }
    }

    async fn step_done(
        &self,
        signup: SignupId,
        step: &'static str,
        status: StepOutcome,
    ) -> Result<(), JobError> {
        let mut tx = self.db.system_tx("onboarding step").await?;
        store::record_step(&mut tx, signup, step, status).await?;
        tx.commit().await?;
        tracing::info!(signup = %signup, step, status = status.as_str(), "onboarding step");
        count_step(step, status);
        self.halt_if_asked(step).await;
        Ok(())
    }

    async fn halt_if_asked(&self, step: &'static str) {
        #[cfg(feature = "fault-injection")]
        if self.halt_after == Some(step) {
            std::future::pending::<()>().await;
        }
        let _ = step;
    }

    async fn set_status(
        &self,
        id: SignupId,
        status: SignupStatus,
        reason: Option<&str>,
    ) -> Result<(), JobError> {
        let mut tx = self.db.system_tx("onboarding status").await?;
        store::set_status(&mut tx, id, status, reason).await?;
        Ok(tx.commit().await?)
    }

    async fn set_provider_ids(
        &self,
        id: SignupId,
        customer: Option<&str>,
        invoice: Option<&str>,
    ) -> Result<(), JobError> {
        let mut tx = self.db.system_tx("onboarding provider ids").await?;
        store::set_provider_ids(&mut tx, id, customer, invoice).await?;
        Ok(tx.commit().await?)
    }

    pub(crate) async fn fail(&self, signup: &Signup, reason: String) -> Result<(), JobError> {
        tracing::warn!(signup = %signup.id, %reason, "onboarding failed");
        metrics::counter!("signups_failed_total").increment(1);
        self.set_status(signup.id, SignupStatus::Failed, Some(&reason))
            .await?;
        // Nothing may stay behind that could be charged: an unpaid signup invoice was
        // voided already; the customer goes too.
        if let (Some(payments), Some(customer)) = (&self.payments, &signup.stripe_customer_id) {
            payments
                .delete_customer(customer)
                .await
                .map_err(payment_retry)?;
        }
        Ok(())
    }

    /// Runs the signup's remaining steps. `attempt` says whether an earlier run of this
    /// job may have left objects at the payment provider that must be found, not made.
    #[tracing::instrument(name = "signup_run", skip(self, attempt), fields(signup = %id))]
    pub(crate) async fn run_signup(&self, id: SignupId, attempt: Attempt) -> Result<(), JobError> {
        let load = |lock| async move {
            let mut tx = self.db.system_tx("onboarding read").await?;
            let signup = store::get(&mut tx, id, lock).await.map_err(|e| match e {
                StoreError::NotFound => JobError::Permanent(format!("signup {id} does not exist")),
                other => other.into(),
            })?;
            let steps = store::steps(&mut tx, id).await?;
            tx.commit().await?;
            Ok::<_, JobError>((signup, steps))
        };
        let (mut signup, done) = load(false).await?;
        if signup.status.is_final() {
            return Ok(());
        }
        let has = |step: &str| done.iter().any(|s| s.name == step);
        let plan = {
            let mut conn = self.db.pool().acquire().await?;
            tenancy::plans::get(&mut conn, &signup.plan_code).await?
        };
        let paid = plan.base_fee > 0;

        // 1. The customer at the payment provider (also for free plans, when billing is
        //    configured, so that a later upgrade has somewhere to charge; not for a
        //    readiness probe's free signup, which will never pay and is erased at once).
        let payments = self.payments.as_ref().filter(|_| paid || !signup.synthetic);
        match (payments, paid) {
            (None, true) => return self.fail(&signup, "billing is not configured".into()).await,
            (None, false) => {
                if !has(steps::CUSTOMER_CREATED) {
                    self.step_done(id, steps::CUSTOMER_CREATED, StepOutcome::Skipped)
                        .await?;
                }
            }
            (Some(payments), _) => {
                if signup.stripe_customer_id.is_none() || !has(steps::CUSTOMER_CREATED) {
                    let details = CustomerDetails {
                        reference: id.to_string(),
                        email: signup.email.clone(),
                        name: signup.company.clone(),
                    };
                    let customer = payments
                        .ensure_customer(&details, attempt)
                        .await
                        .map_err(payment_retry)?;
                    self.set_provider_ids(id, Some(&customer), None).await?;
                    signup.stripe_customer_id = Some(customer);
                    self.step_done(id, steps::CUSTOMER_CREATED, StepOutcome::Done)
                        .await?;
                }
            }
        }

        // 2 and 3. Payment method and first payment, for paid plans.
        if paid {
            let payments = self.payments.as_ref().expect("checked above");
            let customer = signup.stripe_customer_id.clone().expect("set above");
            self.set_status(id, SignupStatus::PaymentProcessing, None)
                .await?;
            if !has(steps::PAYMENT_METHOD_ATTACHED) {
                let method = signup.payment_method.clone().unwrap_or_default();
                match payments
                    .ensure_default_payment_method(&customer, &method, attempt)
                    .await
                {
                    Ok(_) => {
                        self.step_done(id, steps::PAYMENT_METHOD_ATTACHED, StepOutcome::Done)
                            .await?
                    }
                    Err(error) => return self.payment_failed(&signup, error).await,
                }
            }
            if !has(steps::PAYMENT_CONFIRMED) {
                match self.first_payment(&signup, &plan, attempt).await? {
                    Ok(()) => {
                        self.step_done(id, steps::PAYMENT_CONFIRMED, StepOutcome::Done)
                            .await?
                    }
                    Err(error) => return self.payment_failed(&signup, error).await,
                }
            }
        } else {
            for step in [steps::PAYMENT_METHOD_ATTACHED, steps::PAYMENT_CONFIRMED] {
                if !has(step) {
                    self.step_done(id, step, StepOutcome::Skipped).await?;
                }
            }
        }

        // 4 and 5. Provisioning and the welcome message, in one transaction.
        let (signup, _) = load(false).await?;
        self.provision(&signup).await?;
        self.halt_if_asked(steps::TENANT_PROVISIONED).await;
        Ok(())
    }

    /// Composes the signup invoice at Stripe and pays it; or why the payment failed
    /// (after voiding the invoice, so that nothing is left to collect).
    async fn first_payment(
        &self,
        signup: &Signup,
        plan: &tenancy::plans::Plan,
        attempt: Attempt,
    ) -> Result<Result<(), PaymentError>, JobError> {
        let payments = self.payments.as_ref().expect("checked by the caller");
        let customer = signup.stripe_customer_id.as_deref().unwrap_or_default();
        let rated = billing::period_invoice::signup_invoice(plan)
            .map_err(|error| JobError::Permanent(error.to_string()))?;
        let invoice =
            billing::invoices::signup_invoice_id(TenantId::from_uuid(signup.id.as_uuid()));
        let draft = billing::collection::signup_draft(invoice, &rated);
        let pushed = match payments.push_invoice(customer, &draft, attempt).await {
            Ok(pushed) => pushed,
            Err(error) if error.is_retryable() => return Err(payment_retry(error)),
            Err(error) => return Ok(Err(error)),
        };
        if let Some(difference) = pushed.differs_from(&draft) {
            return Err(JobError::Permanent(format!(
                "the signup invoice differs at Stripe: {difference}"
            )));
        }
        // Recorded before the charge, so that an operator can find it whatever happens.
        self.set_provider_ids(signup.id, None, Some(&pushed.id))
            .await?;
        let outcome = payments
            .charge_invoice(&pushed.id, &format!("charge-{invoice}-signup"))
            .await;
        let failure = match outcome {
            Ok(ChargeOutcome::Paid) => return Ok(Ok(())),
            Ok(ChargeOutcome::Declined { code, message, .. }) => {
                PaymentError::Declined { code, message }
            }
            Ok(ChargeOutcome::Closed { status }) => {
                PaymentError::Refused(format!("the signup invoice is {status}"))
            }
            Err(error) if error.is_retryable() => return Err(payment_retry(error)),
            Err(error) => error,
        };
        payments
            .void_invoice(&pushed.id)
            .await
            .map_err(payment_retry)?;
        Ok(Err(failure))
    }

    async fn payment_failed(&self, signup: &Signup, error: PaymentError) -> Result<(), JobError> {
        match error {
            PaymentError::Declined { code, .. } => {
                self.fail(signup, format!("payment_declined: {code}")).await
            }
            PaymentError::Refused(message) | PaymentError::NotFound(message) => {
                self.fail(signup, format!("payment_method_invalid: {message}"))
                    .await
            }
            other => Err(payment_retry(other)),
        }
    }

    /// The tenant, its first API key, the audit entry and the welcome message, all or
    /// nothing; a second run finds the signup completed and does nothing.
    async fn provision(&self, signup: &Signup) -> Result<(), JobError> {
        let mut tx = self.db.system_tx("onboarding provision").await?;
        let current = store::get(&mut tx, signup.id, true).await?;
        if current.status.is_final() {
            return Ok(());
        }
        sqlx::query("UPDATE signups SET status = 'provisioning' WHERE id = $1")
            .bind(signup.id.as_uuid())
            .execute(&mut *tx)
            .await?;
        let tenant_id = TenantId::from_uuid(signup.id.as_uuid());
        let tenant = tenancy::tenants::insert(
            &mut tx,
            &NewTenant {
                id: tenant_id,
                name: signup.company.clone(),
                email: Some(signup.email.clone()),
                state: TenantState::Active,
                plan_code: signup.plan_code.clone(),
                billing_anchor: chrono::Utc::now(),
                billing_cycle: self.billing_cycle,
                synthetic: signup.synthetic,
                stripe_customer_id: signup.stripe_customer_id.clone(),
            },
        )
        .await?;
        if let Some(paid) = &signup.stripe_invoice_id {
            let plan = tenancy::plans::get(&mut tx, &signup.plan_code).await?;
            let rated = billing::period_invoice::signup_invoice(&plan)
                .map_err(|error| JobError::Permanent(error.to_string()))?;
            billing::invoices::record_signup_invoice(&mut tx, &tenant, &rated, paid).await?;
        }
        let key_error = |error| match error {
            tenancy::api_keys::CreateKeyError::Store(store) => store.into(),
            // The tenant was made in this transaction: neither can happen.
            other => JobError::Permanent(other.to_string()),
        };
        // The key was made when the signup was accepted; only its hash is here. A signup
        // accepted before that gets one now, kept for its first read as it always was.
        let plaintext_key = match &signup.first_key {
            Some((hash, prefix)) => {
                tenancy::api_keys::create_with_hash(&mut tx, tenant_id, "default", prefix, hash)
                    .await
                    .map_err(key_error)?;
                None
            }
            None => Some(
                tenancy::api_keys::create(&mut tx, tenant_id, "default")
                    .await
                    .map_err(key_error)?
                    .secret,
            ),
        };
        sqlx::query(
            "UPDATE signups SET status = 'completed', completed_at = now(), \
                    api_key_secret = $2 WHERE id = $1",
        )
        .bind(signup.id.as_uuid())
        .bind(plaintext_key)
        .execute(&mut *tx)
        .await?;
        let mut entry = AuditEntry::new(
            Some(tenant_id),
            Actor::System("onboarding"),
            "tenant.provisioned",
        );
        entry.from_state = Some(TenantState::Provisioning);
        entry.to_state = Some(TenantState::Active);
        entry.details = serde_json::json!({ "signup_id": signup.id, "plan": signup.plan_code });
        audit::record(&mut tx, &entry).await?;
        store::record_step(
            &mut tx,
            signup.id,
            steps::TENANT_PROVISIONED,
            StepOutcome::Done,
        )
        .await?;
        // The first mail asks the recipient to confirm the address; nothing else is mailed
        // to it before that. A readiness probe's signup has nobody to write to, and an
        // address named by too many signups today gets no more.
        let mail =
            !signup.synthetic && outbox::may_send_confirmation(&mut tx, &signup.email).await?;
        let welcome = if mail {
            StepOutcome::Done
        } else {
            StepOutcome::Skipped
        };
        if mail {
            let token = email_verification::start(&mut tx, tenant_id).await?;
            outbox::enqueue(
                &mut tx,
                &outbox::NewMessage {
                    tenant: tenant_id,
                    kind: outbox::Kind::EmailVerification,
                    recipient: &signup.email,
                    subject: "Confirm your email address",
                    body: &confirmation_body(&token),
                    dedup_key: &format!("welcome-{tenant_id}"),
                },
            )
            .await?;
        }
        store::record_step(&mut tx, signup.id, steps::WELCOME_QUEUED, welcome).await?;
        tx.commit().await?;
        count_step(steps::TENANT_PROVISIONED, StepOutcome::Done);
        count_step(steps::WELCOME_QUEUED, welcome);
        metrics::counter!("signups_completed_total").increment(1);
        let elapsed = (chrono::Utc::now() - signup.created_at).as_seconds_f64();
        metrics::histogram!("onboarding_completed_seconds").record(elapsed);
        tracing::info!(signup = %signup.id, tenant = %tenant_id, elapsed, "tenant provisioned");
        Ok(())
    }
}

fn count_step(step: &'static str, status: StepOutcome) {
    metrics::counter!("onboarding_steps_total", "step" => step, "status" => status.as_str())
        .increment(1);
}

fn payment_retry(error: PaymentError) -> JobError {
    if error.is_retryable() {
        JobError::Retry(error.to_string())
    } else {
        JobError::Permanent(error.to_string())
    }
}

/// The confirmation mail. Fixed text and our token only: nothing the signer-up wrote, so
/// naming someone else's address sends them nothing of the signer-up's choosing.
fn confirmation_body(token: &str) -> String {
    format!(
        "An account was opened with this email address. If that was you, confirm the\n\
         address to receive the account's notices: post this token to\n\
         /v1/email-verifications, as {{\"token\": \"...\"}}:\n\n\
         {token}\n\n\
         If it was not you, ignore this message: nothing more will be sent to you."
    )
}
