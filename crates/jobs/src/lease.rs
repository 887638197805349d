//! The statements a worker runs on the rows it claims: taking a lease, renewing it, and
//! recording how a run ended. A job is claimed only while it holds no other job's
//! concurrency key, so jobs sharing a key run one at a time across all workers.

use std::time::Duration;

use db::StoreError;
use serde_json::Value;
use sqlx::PgPool;

use crate::kind::JobContext;
use crate::queue::JobId;
use crate::worker::JobError;

/// Candidates passed over in one claim because their key was taken meanwhile; past them
/// the worker waits for its next poll.
const CLAIM_TRIES: usize = 8;

/// A claimed job, as the worker holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Claimed {
    pub id: JobId,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
    pub max_attempts: i32,
}

impl Claimed {
    pub fn context(&self) -> JobContext {
        JobContext {
            id: self.id,
            attempt: self.attempts,
            max_attempts: self.max_attempts,
        }
    }
}

/// One worker's hold on the queue: its name (which leases carry) and lease length.
pub(crate) struct Leases<'a> {
    pub pool: &'a PgPool,
    pub holder: &'a str,
    pub lease: Duration,
}

impl Leases<'_> {
    /// Takes the lease on the next due job of `kinds`, never one whose attempts are used
    /// up nor one whose concurrency key another running job holds.
    pub async fn claim(&self, kinds: &[&str]) -> Result<Option<Claimed>, StoreError> {
        let mut passed: Vec<JobId> = Vec::new();
        for _ in 0..CLAIM_TRIES {
            let mut tx = self.pool.begin().await?;
            // The keys held by running jobs are read once (few rows, through
            // jobs_leased_idx) and each candidate is probed against them, so a claim
            // costs the same whatever plan the queue's statistics lead to; asked per
            // candidate, it cost 25 ms with thousands of keyed jobs waiting.
            let candidate: Option<(JobId, Option<String>)> = sqlx::query_as(
                "WITH held AS MATERIALIZED ( \
                     SELECT DISTINCT concurrency_key FROM jobs \
                     WHERE status = 'pending' AND locked_until >= now() \
                       AND locked_until IS NOT NULL AND concurrency_key IS NOT NULL) \
                 SELECT id, concurrency_key FROM jobs j \
                 WHERE status = 'pending' AND run_at <= now() AND attempts < max_attempts \
                   AND (locked_until IS NULL OR locked_until < now()) AND kind = ANY($1) \
                   AND id <> ALL($2) \
                   AND (concurrency_key IS NULL \
                        OR concurrency_key NOT IN (SELECT concurrency_key FROM held)) \
                 ORDER BY run_at LIMIT 1 FOR UPDATE OF j SKIP LOCKED",
            )
            .bind(kinds)
            .bind(&passed)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((id, key)) = candidate else {
                return Ok(None);
            };
            if let Some(key) = key {
                // Two workers may pick different jobs of one key at once, neither seeing
                // the other's uncommitted lease. The lock orders them; the check after it
                // sees any lease committed before.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('job:' || $1, 0))")
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                let taken: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE concurrency_key = $1 AND id <> $2 \
                       AND status = 'pending' AND locked_until >= now())",
                )
                .bind(&key)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                if taken {
                    passed.push(id);
                    continue;
                }
            }
            let claimed = sqlx::query_as(
                "UPDATE jobs SET attempts = attempts + 1, locked_by = $2, \
                        locked_until = now() + make_interval(secs => $3) \
                 WHERE id = $1 RETURNING id, kind, payload, attempts, max_attempts",
            )
            .bind(id)
            .bind(self.holder)
            .bind(self.lease.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Some(claimed));
        }
        Ok(None)
    }

    /// Dead-letters the jobs whose last attempt never ended (their process died with
    /// it, say) instead of letting them run past their attempts.
    pub async fn bury_abandoned(&self, kinds: &[&str]) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE jobs SET status = 'dead', finished_at = now(), locked_until = NULL, \
                    last_error = 'its last attempt never ended (the worker stopped during it)' \
             WHERE status = 'pending' AND attempts >= max_attempts \
               AND (locked_until IS NULL OR locked_until < now()) AND kind = ANY($1)",
        )
        .bind(kinds)
        .execute(self.pool)
        .await?
        .rows_affected())
    }

    pub async fn renew(&self, job: &Claimed) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET locked_until = now() + make_interval(secs => $3) \
             WHERE id = $1 AND locked_by = $2 AND status = 'pending'",
        )
        .bind(job.id)
        .bind(self.holder)
        .bind(self.lease.as_secs_f64())
        .execute(self.pool)
        .await?;
        Ok(())
    }

    pub async fn complete(&self, job: &Claimed) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET status = 'done', finished_at = now(), locked_until = NULL, \
                    last_error = NULL \
             WHERE id = $1 AND locked_by = $2 AND status = 'pending'",
        )
        .bind(job.id)
        .bind(self.holder)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed run: dead at once when permanent or out of attempts, else due
    /// again after `delay`.
    pub async fn fail(
        &self,
        job: &Claimed,
        error: &JobError,
        dead: bool,
        delay: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET status = CASE WHEN $3 THEN 'dead' ELSE 'pending' END, \
                    finished_at = CASE WHEN $3 THEN now() END, \
                    run_at = now() + make_interval(secs => $4), \
                    locked_until = NULL, last_error = $5 \
             WHERE id = $1 AND locked_by = $2 AND status = 'pending'",
        )
        .bind(job.id)
        .bind(self.holder)
        .bind(dead)
        .bind(delay.as_secs_f64())
        .bind(error.to_string())
        .execute(self.pool)
        .await?;
        Ok(())
    }
}
