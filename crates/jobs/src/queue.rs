//! Writing jobs and reading their state: the queue as callers outside a worker see it.

use chrono::{DateTime, Utc};
use db::StoreError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::kind::{JobKind, JobOptions};

/// The channel workers listen on.
pub(crate) const NOTIFY_CHANNEL: &str = "jobs";

pub type JobId = Uuid;

/// See [`JobKind::enqueue`].
pub(crate) async fn enqueue<J: JobKind>(
    conn: &mut PgConnection,
    job: &J,
    options: JobOptions,
) -> Result<Option<JobId>, StoreError> {
    let payload = serde_json::to_value(job)
        .map_err(|error| StoreError::Corrupt(format!("a {} job: {error}", J::KIND)))?;
    let id: Option<JobId> = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, payload, dedup_key, concurrency_key, run_at, max_attempts) \
         VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), $7) \
         ON CONFLICT (kind, dedup_key) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(J::KIND)
    .bind(&payload)
    .bind(&options.dedup_key)
    .bind(job.concurrency_key())
    .bind(options.run_at)
    .bind(options.max_attempts)
    .fetch_optional(&mut *conn)
    .await?;
    if id.is_some() {
        // Delivered when the transaction commits, never before.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(J::KIND)
            .execute(&mut *conn)
            .await?;
        metrics::counter!("jobs_enqueued_total", "kind" => J::KIND).increment(1);
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

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to run, running, or waiting for its next attempt.
    Pending,
    Done,
    /// Out of attempts, or refused for good; kept for operators.
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobStatus {
    pub status: JobState,
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

/// Whether a job of kind `J` is waiting to run or running: for a scheduler that queues
/// the next round of a kind only once the last one has drained.
pub async fn is_queued<J: JobKind>(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'pending' AND kind = $1)",
    )
    .bind(J::KIND)
    .fetch_one(conn)
    .await?)
}
