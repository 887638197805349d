//! The onboarding job: one per accepted signup, written with the signup, run by
//! [`OnboardingWorkflow`] until the signup is provisioned or has failed visibly.

use async_trait::async_trait;
use jobs::{JobContext, JobError, JobHandler, JobKind, JobOptions};
use payments::Attempt;
use saas_core::SignupId;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::StoreError;

use crate::store;
use crate::workflow::OnboardingWorkflow;

/// Takes one signup through payment and provisioning.
#[derive(Debug, Serialize, Deserialize)]
pub struct OnboardingJob {
    pub signup_id: SignupId,
}

impl JobKind for OnboardingJob {
    const KIND: &'static str = "onboarding.signup";
}

/// The job that onboards `signup`, written in the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, signup: SignupId) -> Result<(), StoreError> {
    let job = OnboardingJob { signup_id: signup };
    let options = JobOptions::dedup_key(signup.to_string()).max_attempts(20);
    job.enqueue(conn, options).await?;
    Ok(())
}

#[async_trait]
impl JobHandler<OnboardingJob> for OnboardingWorkflow {
    async fn run(&self, job: OnboardingJob, context: JobContext) -> Result<(), JobError> {
        let id = job.signup_id;
        let result = self.run_signup(id, Attempt::of_run(context.attempt)).await;
        // Refused for good, or out of attempts: the signup fails visibly (and frees its
        // email and company for another try) instead of staying pending forever.
        let reason = match &result {
            Err(JobError::Permanent(reason)) => Some(reason),
            Err(JobError::Retry(reason)) if context.is_last_attempt() => Some(reason),
            _ => None,
        };
        if let Some(reason) = reason {
            let mut tx = self.db.system_tx("onboarding give up").await?;
            let signup = store::get(&mut tx, id, false).await;
            tx.commit().await?;
            if let Ok(signup) = signup
                && !signup.status.is_final()
            {
                self.fail(&signup, format!("onboarding_failed: {reason}"))
                    .await?;
            }
        }
        result
    }
}
