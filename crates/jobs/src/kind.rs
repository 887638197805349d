//! What a job is to the code that queues and runs it: a typed payload that names its
//! kind, the options it is queued with, and what a run knows of itself.

use std::future::Future;

use chrono::{DateTime, Utc};
use db::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use crate::queue::{self, JobId};

/// A kind of job. The struct is the job's payload, stored as JSON, so the enqueuer and
/// the handler cannot disagree on its shape.
pub trait JobKind: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name stored with each job. Jobs of a name may wait in the queue across a
    /// deployment, so a name, and the fields its payload needs, outlive any release.
    const KIND: &'static str;

    /// Jobs that share a key never run at the same time, on any worker: one tenant's
    /// state changes, say, which would otherwise race each other into retries.
    fn concurrency_key(&self) -> Option<String> {
        None
    }

    /// Writes this job on `conn`, usually inside the caller's transaction, so the job
    /// exists if and only if that transaction commits. Returns its id, or `None` when a
    /// job of this kind with the same dedup key exists already.
    fn enqueue<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        options: JobOptions,
    ) -> impl Future<Output = Result<Option<JobId>, StoreError>> + Send + 'a {
        queue::enqueue(conn, self, options)
    }
}

/// How a job is queued.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Enqueueing another job of the same kind with the same key does nothing.
    pub(crate) dedup_key: Option<String>,
    /// Not before this time (`None`: now).
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) max_attempts: i32,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            dedup_key: None,
            run_at: None,
            max_attempts: 10,
        }
    }
}

impl JobOptions {
    /// At most one job of the kind with this key, ever.
    pub fn dedup_key(key: impl Into<String>) -> Self {
        Self {
            dedup_key: Some(key.into()),
            ..Self::default()
        }
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }
}

/// What one run of a job knows about itself.
#[derive(Debug, Clone, Copy)]
pub struct JobContext {
    pub id: JobId,
    /// This run's number, from 1.
    pub attempt: i32,
    pub max_attempts: i32,
}

impl JobContext {
    /// No retry follows this run if it fails: the handler's last chance to leave things
    /// in a state nobody has to mend by hand.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// The concurrency key of the jobs that change one tenant, so they run one at a time.
pub fn tenant_key(tenant: impl std::fmt::Display) -> Option<String> {
    Some(format!("tenant:{tenant}"))
}
