//! The job queue against real Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use integration_tests::TestApp;
use jobs::{
    JobContext, JobError, JobHandler, JobKind, JobOptions, JobState, Worker, WorkerSettings,
    job_status,
};
use serde::{Deserialize, Serialize};

/// A handler whose behaviour the test chooses, counting its runs.
#[derive(Clone)]
struct Probe {
    runs: Arc<AtomicUsize>,
    behaviour: Behaviour,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    Fail,
    FailPermanently,
    Hang,
    Slow,
    Panic,
}

/// The probe's job: a number to tell jobs apart, and an optional concurrency key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeJob {
    n: u32,
    key: Option<String>,
}

impl JobKind for ProbeJob {
    const KIND: &'static str = "probe";

    fn concurrency_key(&self) -> Option<String> {
        self.key.clone()
    }
}

#[async_trait]
impl JobHandler<ProbeJob> for Probe {
    async fn run(&self, _job: ProbeJob, _: JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match self.behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::Fail => Err(JobError::Retry("not yet".into())),
            Behaviour::FailPermanently => Err(JobError::Permanent("never".into())),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::Slow => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            }
            Behaviour::Panic => panic!("a bug in the handler"),
        }
    }
}

fn make_worker(
    app: &TestApp,
    behaviour: Behaviour,
    settings: WorkerSettings,
) -> (Worker, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let probe = Probe {
        runs: runs.clone(),
        behaviour,
    };
    (Worker::new(&app.db, settings).register(probe), runs)
}

fn quick() -> WorkerSettings {
    WorkerSettings {
        lease: Duration::from_millis(300),
        poll_interval: Duration::from_millis(20),
        backoff_base: Duration::ZERO,
        ..WorkerSettings::default()
    }
}

async fn push(app: &TestApp, job: ProbeJob, options: JobOptions) -> Option<jobs::JobId> {
    let mut tx = app.db.system_tx("test").await.unwrap();
    let id = job.enqueue(&mut tx, options).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn status(app: &TestApp, id: jobs::JobId) -> jobs::JobStatus {
    job_status(&mut app.db.pool().acquire().await.unwrap(), id)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_exists_only_if_its_transaction_commits_and_dedup_keys_make_one() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let mut tx = app.db.system_tx("test").await.unwrap();
    ProbeJob::default()
        .enqueue(&mut tx, JobOptions::default())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let (worker, runs) = make_worker(&app, Behaviour::Succeed, quick());
    assert_eq!(worker.run_pending().await.unwrap(), 0);

    let first = push(
        &app,
        ProbeJob { n: 1, key: None },
        JobOptions::dedup_key("invoice-t1-p1"),
    )
    .await;
    let second = push(
        &app,
        ProbeJob { n: 2, key: None },
        JobOptions::dedup_key("invoice-t1-p1"),
    )
    .await;
    assert!(first.is_some());
    assert!(second.is_none(), "same kind and key: one job");
    assert_eq!(worker.run_pending().await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(status(&app, first.unwrap()).await.status, JobState::Done);
}

#[tokio::test]
async fn failures_retry_later_with_stored_backoff_then_die_and_stay_visible() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let slow_retry = WorkerSettings {
        backoff_base: Duration::from_secs(3600),
        ..quick()
    };
    let (worker, runs) = make_worker(&app, Behaviour::Fail, slow_retry);
    let id = push(
        &app,
        ProbeJob::default(),
        JobOptions::default().max_attempts(3),
    )
    .await
    .unwrap();
    assert_eq!(worker.run_pending().await.unwrap(), 1);
    assert_eq!(
        worker.run_pending().await.unwrap(),
        0,
        "the retry is an hour away"
    );
    let after_failure = status(&app, id).await;
    assert_eq!(after_failure.status, JobState::Pending);
    assert!(after_failure.run_at > chrono::Utc::now() + chrono::TimeDelta::minutes(59));
    assert_eq!(after_failure.last_error.as_deref(), Some("not yet"));

    let (impatient, _) = worker_with_runs(&app, Behaviour::Fail, runs.clone());
    sqlx::query("UPDATE jobs SET run_at = now()")
        .execute(app.db.pool())
        .await
        .unwrap();
    assert_eq!(
        impatient.run_pending().await.unwrap(),
        2,
        "attempts 2 and 3"
    );
    let dead = status(&app, id).await;
    assert_eq!((dead.status, dead.attempts), (JobState::Dead, 3));
    assert_eq!(impatient.run_pending().await.unwrap(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    let permanent = push(
        &app,
        ProbeJob::default(),
        JobOptions::default().max_attempts(5),
    )
    .await
    .unwrap();
    let (refusing, _) = make_worker(&app, Behaviour::FailPermanently, quick());
    refusing.run_pending().await.unwrap();
    assert_eq!(
        status(&app, permanent).await.status,
        JobState::Dead,
        "no retry can help"
    );
}

fn worker_with_runs(
    app: &TestApp,
    behaviour: Behaviour,
    runs: Arc<AtomicUsize>,
) -> (Worker, Arc<AtomicUsize>) {
    let probe = Probe {
        runs: runs.clone(),
        behaviour,
    };
    (Worker::new(&app.db, quick()).register(probe), runs)
}

#[tokio::test]
async fn a_job_held_by_a_dead_worker_is_taken_over_when_its_lease_runs_out() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let id = push(&app, ProbeJob::default(), JobOptions::default())
        .await
        .unwrap();
    let (stuck, _) = make_worker(&app, Behaviour::Hang, quick());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let crashed = tokio::spawn(stuck.run(stop_rx));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The worker dies mid-job: nothing renews its lease any more.
    crashed.abort();
    drop(stop_tx);
    let (healthy, runs) = make_worker(&app, Behaviour::Succeed, quick());
    assert_eq!(
        healthy.run_pending().await.unwrap(),
        0,
        "the lease is still held"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(healthy.run_pending().await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let done = status(&app, id).await;
    assert_eq!((done.status, done.attempts), (JobState::Done, 2));
}

#[tokio::test]
async fn a_running_job_keeps_its_lease_while_the_handler_works() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let id = push(&app, ProbeJob::default(), JobOptions::default())
        .await
        .unwrap();
    // Slow (300 ms) under a 90 ms lease: without renewal another worker would take it.
    let short = WorkerSettings {
        lease: Duration::from_millis(90),
        ..quick()
    };
    let (slow, slow_runs) = make_worker(&app, Behaviour::Slow, short);
    let running = tokio::spawn(async move { slow.run_pending().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (other, other_runs) = make_worker(&app, Behaviour::Succeed, quick());
    assert_eq!(other.run_pending().await.unwrap(), 0);
    assert_eq!(running.await.unwrap().unwrap(), 1);
    assert_eq!(slow_runs.load(Ordering::SeqCst), 1);
    assert_eq!(other_runs.load(Ordering::SeqCst), 0);
    assert_eq!(status(&app, id).await.status, JobState::Done);
}

#[tokio::test]
async fn scheduled_jobs_wait_for_their_time() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let at = chrono::Utc::now() + chrono::TimeDelta::milliseconds(400);
    push(&app, ProbeJob::default(), JobOptions::default().run_at(at))
        .await
        .unwrap();
    let (worker, _) = make_worker(&app, Behaviour::Succeed, quick());
    assert_eq!(worker.run_pending().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(worker.run_pending().await.unwrap(), 1);
}

#[tokio::test]
async fn a_notification_wakes_the_worker_and_stopping_lets_running_jobs_finish() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    // Polling is a minute apart, so only the notification can wake it in time.
    let sleepy = WorkerSettings {
        poll_interval: Duration::from_secs(60),
        ..quick()
    };
    let (worker, runs) = make_worker(&app, Behaviour::Slow, sleepy);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.run(stop_rx));
    tokio::time::sleep(Duration::from_millis(200)).await; // listening by now
    let id = push(&app, ProbeJob::default(), JobOptions::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the notification did not wake the worker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Stop while the (300 ms) job runs: it finishes and is recorded.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status(&app, id).await.status, JobState::Done);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempts_and_ends_dead() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let (worker, runs) = make_worker(&app, Behaviour::Panic, quick());
    let id = push(
        &app,
        ProbeJob::default(),
        JobOptions::default().max_attempts(3),
    )
    .await
    .unwrap();
    // Each attempt panics; the worker survives and counts it as a failure.
    for _ in 0..5 {
        worker.run_pending().await.unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "never past its attempts");
    let job = status(&app, id).await;
    assert_eq!(job.status, JobState::Dead);
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("panicked"),
        "{:?}",
        job.last_error
    );
}

#[tokio::test]
async fn a_job_whose_last_attempt_never_ended_is_dead_lettered_not_run_again() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let (worker, runs) = make_worker(&app, Behaviour::Succeed, quick());
    let id = push(
        &app,
        ProbeJob::default(),
        JobOptions::default().max_attempts(2),
    )
    .await
    .unwrap();
    // A worker claimed its last attempt and died: the lease ran out.
    sqlx::query(
        "UPDATE jobs SET attempts = 2, locked_by = 'a-worker-that-died', \
                locked_until = now() - interval '1 second' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.owner_pool)
    .await
    .unwrap();
    assert_eq!(worker.run_pending().await.unwrap(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let job = status(&app, id).await;
    assert_eq!(job.status, JobState::Dead);
    assert_eq!(job.attempts, 2, "attempts never grow past the limit");
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("never ended"),
        "{:?}",
        job.last_error
    );
}

#[tokio::test]
async fn an_attempt_past_its_deadline_fails() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let settings = WorkerSettings {
        deadline: Duration::from_millis(200),
        ..quick()
    };
    let (worker, runs) = make_worker(&app, Behaviour::Hang, settings);
    let id = push(
        &app,
        ProbeJob::default(),
        JobOptions::default().max_attempts(1),
    )
    .await
    .unwrap();
    worker.run_pending().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let job = status(&app, id).await;
    assert_eq!(job.status, JobState::Dead);
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("deadline"),
        "{:?}",
        job.last_error
    );
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_dead_at_once() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    // Written by hand, as a release with another idea of the payload might have.
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, payload, max_attempts) \
         VALUES (gen_random_uuid(), 'probe', '{\"n\": \"seven\"}', 5) RETURNING id",
    )
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    let (worker, runs) = make_worker(&app, Behaviour::Succeed, quick());
    worker.run_pending().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler never saw it");
    let job = status(&app, id).await;
    assert_eq!((job.status, job.attempts), (JobState::Dead, 1));
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("bad probe payload"),
        "{:?}",
        job.last_error
    );
}

/// Counts the runs in progress, in all and per concurrency key, keeping the highest.
#[derive(Clone, Default)]
struct Overlap {
    running: Arc<std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>>,
    most_at_once: Arc<AtomicUsize>,
    most_of_one_key: Arc<AtomicUsize>,
}

#[async_trait]
impl JobHandler<ProbeJob> for Overlap {
    async fn run(&self, job: ProbeJob, _: JobContext) -> Result<(), JobError> {
        let key = job.key.clone().unwrap_or_else(|| format!("none-{}", job.n));
        {
            let mut running = self.running.lock().unwrap();
            running.0 += 1;
            let total = running.0;
            let of_key = running.1.entry(key.clone()).or_default();
            *of_key += 1;
            self.most_at_once.fetch_max(total, Ordering::SeqCst);
            self.most_of_one_key.fetch_max(*of_key, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut running = self.running.lock().unwrap();
        running.0 -= 1;
        *running.1.get_mut(&key).unwrap() -= 1;
        Ok(())
    }
}

#[tokio::test]
async fn jobs_sharing_a_concurrency_key_run_one_at_a_time_across_workers() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let mut tx = app.db.system_tx("test").await.unwrap();
    for n in 0..15 {
        let key = match n % 3 {
            0 => Some("tenant:a".to_owned()),
            1 => Some("tenant:b".to_owned()),
            _ => None,
        };
        ProbeJob { n, key }
            .enqueue(&mut tx, JobOptions::default())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    // Two workers, each able to run every job at once, race for them.
    let overlap = Overlap::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let worker = Worker::new(&app.db, quick()).register(overlap.clone());
            tokio::spawn(worker.run(stopped.clone()))
        })
        .collect();
    let mut done = 0_i64;
    for _ in 0..300 {
        done = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'done'")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
        if done == 15 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(done, 15, "every job ran, keyed or not");
    assert_eq!(
        overlap.most_of_one_key.load(Ordering::SeqCst),
        1,
        "two jobs of one key ran at once"
    );
    assert!(
        overlap.most_at_once.load(Ordering::SeqCst) >= 3,
        "jobs of other keys, and jobs without one, still ran side by side"
    );
}
