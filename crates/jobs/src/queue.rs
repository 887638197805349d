use chrono::{DateTime, Utc};
use db::StoreError;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// The channel workers listen on.
pub(crate) const NOTIFY_CHANNEL: &str = "jobs";

pub type JobId = Uuid;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: Value,
    /// Enqueueing another job of the same kind with the same key does nothing.
    pub dedup_key: Option<String>,
    /// Not before this time (`None`: now).
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
}

impl NewJob {
    pub fn new(kind: &'static str, payload: Value) -> Self {
        Self {
            kind,
            payload,
            dedup_key: None,
            run_at: None,
            max_attempts: 10,
        }
    }

    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
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

/// A claimed job, as a handler sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: JobId,
    pub kind: String,
    pub payload: Value,
    /// This run's number, from 1.
    pub attempts: i32,
    pub max_attempts: i32,
}

impl Job {
    /// The payload as the type its enqueuer wrote; one that does not decode is a
    /// permanent failure (no retry can mend it).
    pub fn payload<P: serde::de::DeserializeOwned>(&self) -> Result<P, crate::JobError> {
        serde_json::from_value(self.payload.clone()).map_err(|error| {
            crate::JobError::Permanent(format!("bad {} payload: {error}", self.kind))
        })
    }
}

/// Writes a job on `conn` (usually inside the caller's transaction). Returns its id, or
/// `None` when a job with the same kind and dedup key exists already.
pub async fn enqueue(conn: &mut PgConnection, job: NewJob) -> Result<Option<JobId>, StoreError> {
    let id: Option<JobId> = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, payload, dedup_key, run_at, max_attempts) \
         VALUES ($1, $2, $3, $4, coalesce($5, now()), $6) \
         ON CONFLICT (kind, dedup_key) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(job.kind)
    .bind(&job.payload)
    .bind(&job.dedup_key)
    .bind(job.run_at)
    .bind(job.max_attempts)
    .fetch_optional(&mut *conn)
    .await?;
    if id.is_some() {
        // Delivered when the transaction commits, never before.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(job.kind)
            .execute(&mut *conn)
            .await?;
        metrics::counter!("jobs_enqueued_total", "kind" => job.kind).increment(1);
    }
    Ok(id)
}

/// Which of `values` are the `field` of the payload of a job of one of `kinds` that is
/// waiting to run (for a caller that queues work again only where none is waiting).
pub async fn pending_with(
    conn: &mut PgConnection,
    kinds: &[&str],
    field: &str,
    values: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT payload->>$2 FROM jobs \
         WHERE status = 'pending' AND kind = ANY($1) AND payload->>$2 = ANY($3)",
    )
    .bind(kinds)
    .bind(field)
    .bind(values)
    .fetch_all(conn)
    .await?;
    Ok(found.into_iter().collect())
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobStatus {
    pub status: String,
    pub attempts: i32,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

pub async fn job_status(conn: &mut PgConnection, id: JobId) -> Result<JobStatus, StoreError> {
    Ok(
        sqlx::query_as("SELECT status, attempts, run_at, last_error FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}
