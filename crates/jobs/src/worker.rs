use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use db::{Db, StoreError};
use futures_util::FutureExt;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::kind::{JobContext, JobKind};
use crate::lease::{Claimed, Leases};
use crate::queue::NOTIFY_CHANNEL;

/// How a handler's run ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later (with backoff), unless attempts are exhausted.
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (a payload that does not decode, a refused request): the
    /// job is dead at once.
    #[error("{0}")]
    Permanent(String),
    /// Try again after the given pause rather than the worker's backoff (a handler with
    /// a retry schedule of its own), unless attempts are exhausted.
    #[error("{0}")]
    RetryIn(String, Duration),
}

/// A store failure inside a job is worth retrying: the database may be back next time.
/// (So handlers can use `?` on store calls.)
impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        JobError::Retry(error.to_string())
    }
}

impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        JobError::Retry(error.to_string())
    }
}

/// Runs the jobs of one kind. A type may handle several kinds, one impl each.
#[async_trait]
pub trait JobHandler<J: JobKind>: Send + Sync + 'static {
    /// Runs one attempt. Must be idempotent: a job can run again after a crash.
    async fn run(&self, job: J, context: JobContext) -> Result<(), JobError>;
}

/// A handler with its kind's payload decoding in front, so the worker can hold handlers
/// of every kind in one map.
#[async_trait]
trait Runner: Send + Sync + 'static {
    async fn run(&self, job: &Claimed) -> Result<(), JobError>;
}

struct Typed<J, H> {
    handler: H,
    kind: PhantomData<fn() -> J>,
}

#[async_trait]
impl<J: JobKind, H: JobHandler<J>> Runner for Typed<J, H> {
    async fn run(&self, job: &Claimed) -> Result<(), JobError> {
        // One that does not decode is a permanent failure: no retry can mend it.
        let payload: J = serde_json::from_value(job.payload.clone())
            .map_err(|error| JobError::Permanent(format!("bad {} payload: {error}", J::KIND)))?;
        self.handler.run(payload, job.context()).await
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Unique per process, so leases name their holder.
    pub name: String,
    /// Jobs run at once by this worker.
    pub concurrency: usize,
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// Fallback wake-up when no notification arrives (and for scheduled jobs).
    pub poll_interval: Duration,
    /// Retry delay after the first failure; doubles with each further one.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long one attempt may run; past it, the attempt fails (and is retried).
    pub deadline: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            name: format!(
                "worker-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            concurrency: 8,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            deadline: Duration::from_secs(900),
        }
    }
}

/// Runs the registered handlers' jobs. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    handlers: Arc<HashMap<&'static str, Arc<dyn Runner>>>,
    settings: Arc<WorkerSettings>,
}

impl Worker {
    pub fn new(db: &Db, settings: WorkerSettings) -> Self {
        Self {
            pool: db.pool().clone(),
            handlers: Arc::default(),
            settings: Arc::new(settings),
        }
    }

    /// Runs jobs of kind `J` with `handler`.
    pub fn register<J: JobKind>(mut self, handler: impl JobHandler<J>) -> Self {
        let typed = Typed {
            handler,
            kind: PhantomData::<fn() -> J>,
        };
        Arc::make_mut(&mut self.handlers).insert(J::KIND, Arc::new(typed));
        self
    }

    fn leases(&self) -> Leases<'_> {
        Leases {
            pool: &self.pool,
            holder: &self.settings.name,
            lease: self.settings.lease,
        }
    }

    /// The kinds this worker has handlers for: the only ones it claims.
    fn kinds(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    /// Dead-letters the jobs whose last attempt never ended. At most once per poll
    /// interval, not per claim.
    async fn bury_abandoned(&self) -> Result<(), StoreError> {
        let abandoned = self.leases().bury_abandoned(&self.kinds()).await?;
        if abandoned > 0 {
            tracing::error!(
                count = abandoned,
                "jobs dead: their last attempt never ended"
            );
            metrics::counter!("jobs_abandoned_total").increment(abandoned);
        }
        Ok(())
    }

    /// Runs one claimed job to its end, renewing the lease meanwhile, and records how
    /// it ended.
    async fn execute(&self, job: Claimed) {
        let Some(handler) = self.handlers.get(job.kind.as_str()).cloned() else {
            return;
        };
        let span =
            tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
        self.supervise(handler, job).instrument(span).await
    }

    /// Runs one attempt within its deadline, a panic counting as a failure, and records
    /// the outcome.
    async fn supervise(&self, handler: Arc<dyn Runner>, job: Claimed) {
        let attempt = std::panic::AssertUnwindSafe(handler.run(&job)).catch_unwind();
        let run = async {
            match tokio::time::timeout(self.settings.deadline, attempt).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panic)) => Err(JobError::Retry(format!(
                    "the handler panicked: {}",
                    panic_message(panic.as_ref())
                ))),
                Err(_) => Err(JobError::Retry(format!(
                    "the attempt ran past its deadline of {} s",
                    self.settings.deadline.as_secs()
                ))),
            }
        };
        tokio::pin!(run);
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        renew.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = renew.tick() => {
                    if let Err(error) = self.leases().renew(&job).await {
                        tracing::warn!(%error, "could not renew a job lease");
                    }
                }
            }
        };
        let recorded = match &outcome {
            Ok(()) => self.leases().complete(&job).await,
            Err(error) => self.fail(&job, error).await,
        };
        if let Err(error) = recorded {
            // The lease will run out and the job run again; handlers are idempotent.
            tracing::warn!(%error, "could not record a job's outcome");
        }
        let result = if outcome.is_ok() { "done" } else { "failed" };
        metrics::counter!("jobs_finished_total", "kind" => job.kind.clone(), "result" => result)
            .increment(1);
    }

    async fn fail(&self, job: &Claimed, error: &JobError) -> Result<(), StoreError> {
        let permanent = matches!(error, JobError::Permanent(_));
        let dead = permanent || job.attempts >= job.max_attempts;
        let delay = match error {
            JobError::RetryIn(_, pause) => *pause,
            _ => backoff(&self.settings, job.attempts),
        };
        if dead {
            tracing::error!(%error, "job is dead");
        } else {
            tracing::warn!(%error, retry_in_secs = delay.as_secs_f64(), "job failed; will retry");
        }
        self.leases().fail(job, error, dead, delay).await
    }

    /// Runs due jobs one after another until none is left; returns how many ran. For
    /// tests and command-line use.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        self.bury_abandoned().await?;
        let mut ran = 0;
        while let Some(job) = self.leases().claim(&self.kinds()).await? {
            self.execute(job).await;
            ran += 1;
        }
        Ok(ran)
    }

    /// Runs jobs until `stop` turns true, then lets the jobs in flight finish.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::warn!(%error, "job notifications unavailable; polling only");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "job notifications unavailable; polling only");
                None
            }
        };
        let mut in_flight = JoinSet::new();
        let mut last_burial: Option<tokio::time::Instant> = None;
        while !*stop.borrow() {
            if last_burial.is_none_or(|at| at.elapsed() >= self.settings.poll_interval) {
                last_burial = Some(tokio::time::Instant::now());
                if let Err(error) = self.bury_abandoned().await {
                    tracing::warn!(%error, "could not dead-letter abandoned jobs");
                }
            }
            while in_flight.len() < self.settings.concurrency {
                match self.leases().claim(&self.kinds()).await {
                    Ok(Some(job)) => {
                        let worker = self.clone();
                        in_flight.spawn(async move { worker.execute(job).await });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "could not claim a job");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                notified = async { listener.as_mut()?.recv().await.ok() }, if listener.is_some() => {
                    if notified.is_none() {
                        // The listener reconnects by itself on the next recv.
                        tokio::time::sleep(self.settings.poll_interval).await;
                    }
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Delay before attempt `attempts + 1`: the base, doubled per failure, capped.
fn backoff(settings: &WorkerSettings, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    settings
        .backoff_base
        .saturating_mul(1 << doublings)
        .min(settings.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let settings = WorkerSettings {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            ..WorkerSettings::default()
        };
        let delays: Vec<u64> = (1..=7)
            .map(|attempt| backoff(&settings, attempt).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(&settings, i32::MAX).as_secs(), 60);
    }
}
