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
use saas_core::{BillingCycle, SignupId, TenantId};
use tenancy::{Db, StoreError};

use crate::store::{self, Signup, SignupStatus, StepOutcome};

mod provision;

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
        self.after_step(signup, step, status).await;
        Ok(())
    }

    /// The customer made at the payment provider: its id, the step, and for a paid plan
    /// the move to `payment_processing`, at one commit.
    async fn customer_made(
        &self,
        signup: SignupId,
        customer: &str,
        paid: bool,
    ) -> Result<(), JobError> {
        let step = steps::CUSTOMER_CREATED;
        let mut tx = self.db.system_tx("onboarding customer").await?;
        store::set_provider_ids(&mut tx, signup, Some(customer), None).await?;
        store::record_step(&mut tx, signup, step, StepOutcome::Done).await?;
        if paid {
            store::set_status(&mut tx, signup, SignupStatus::PaymentProcessing, None).await?;
        }
        tx.commit().await?;
        self.after_step(signup, step, StepOutcome::Done).await;
        Ok(())
    }

    async fn after_step(&self, signup: SignupId, step: &'static str, status: StepOutcome) {
        tracing::info!(signup = %signup, step, status = status.as_str(), "onboarding step");
        count_step(step, status);
        self.halt_if_asked(step).await;
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
        // The signup, the steps done so far and its plan, in one read.
        let (mut signup, done, plan) = {
            let mut tx = self.db.system_tx("onboarding read").await?;
            let signup = store::get(&mut tx, id, false).await.map_err(|e| match e {
                StoreError::NotFound => JobError::Permanent(format!("signup {id} does not exist")),
                other => other.into(),
            })?;
            let steps = store::steps(&mut tx, id).await?;
            let plan = tenancy::plans::get(&mut tx, &signup.plan_code).await?;
            tx.commit().await?;
            (signup, steps, plan)
        };
        if signup.status.is_final() {
            return Ok(());
        }
        let has = |step: &str| done.iter().any(|s| s.name == step);
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
                    self.customer_made(id, &customer, paid).await?;
                    signup.stripe_customer_id = Some(customer);
                    if paid {
                        signup.status = SignupStatus::PaymentProcessing;
                    }
                }
            }
        }

        // 2 and 3. Payment method and first payment, for paid plans.
        if paid {
            let payments = self.payments.as_ref().expect("checked above");
            let customer = signup.stripe_customer_id.clone().expect("set above");
            if signup.status != SignupStatus::PaymentProcessing {
                self.set_status(id, SignupStatus::PaymentProcessing, None)
                    .await?;
            }
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
        self.provision(id).await?;
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
