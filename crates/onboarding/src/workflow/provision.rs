//! The last step: the tenant, its first API key, the audit entry and the welcome
//! message, at one commit.

use jobs::JobError;
use saas_core::{SignupId, TenantId, TenantState};
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::email_verification;
use tenancy::tenants::NewTenant;

use crate::store::{self, SignupStatus, StepOutcome};

use super::{OnboardingWorkflow, count_step, steps};

impl OnboardingWorkflow {
    /// The tenant, its first API key, the audit entry and the welcome message, all or
    /// nothing; a second run finds the signup completed and does nothing.
    pub(super) async fn provision(&self, id: SignupId) -> Result<(), JobError> {
        let mut tx = self.db.system_tx("onboarding provision").await?;
        // Read again under its lock: what the earlier steps recorded, and whether a
        // concurrent run finished first.
        let signup = &store::get(&mut tx, id, true).await?;
        if signup.status.is_final() {
            return Ok(());
        }
        store::set_status(&mut tx, id, SignupStatus::Provisioning, None).await?;
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
