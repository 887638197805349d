//! A durable job queue in Postgres.
//!
//! - A job is a typed payload ([`JobKind`]) that names its kind and, optionally, a
//!   concurrency key. [`JobKind::enqueue`] takes the caller's connection, so a job can
//!   be written in the same transaction as the state change it follows up: it exists if
//!   and only if that change committed. A dedup key makes enqueueing twice harmless.
//! - A [`Worker`] claims due jobs with a lease (`FOR UPDATE SKIP LOCKED`), renews the
//!   lease while the handler runs, and on failure moves `run_at` forward (exponential
//!   backoff, stored, so it survives restarts). After `max_attempts` a job is `dead` and
//!   kept for operators. A worker killed mid-job stops renewing; the job is claimed
//!   again when the lease runs out. Handlers must therefore be idempotent.
//! - Jobs sharing a concurrency key run one at a time, across all workers.
//! - Workers wake on `NOTIFY` when a job is enqueued and poll as a fallback (and for
//!   jobs scheduled in the future).

mod kind;
mod lease;
mod queue;
mod worker;

pub use kind::{JobContext, JobKind, JobOptions, tenant_key};
pub use queue::{JobId, JobState, JobStatus, is_queued, job_status, pending_with};
pub use worker::{JobError, JobHandler, Worker, WorkerSettings};
