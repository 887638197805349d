//! The job queue against real Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use integration_tests::TestApp;
use jobs::{Job, JobError, JobHandler, NewJob, Worker, WorkerSettings, enqueue, job_status};
use serde_json::json;

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

#[async_trait]
impl JobHandler for Probe {
    fn kind(&self) -> &'static str {
        "probe"
    }

    async fn run(&self, _job: &Job) -> Result<(), JobError> {
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

async fn push(app: &TestApp, job: NewJob) -> Option<jobs::JobId> {
    let mut tx = app.db.system_tx("test").await.unwrap();
    let id = enqueue(&mut tx, job).await.unwrap();
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
    enqueue(&mut tx, NewJob::new("probe", json!({})))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let (worker, runs) = make_worker(&app, Behaviour::Succeed, quick());
    assert_eq!(worker.run_pending().await.unwrap(), 0);

    let first = push(
        &app,
        NewJob::new("probe", json!({"n": 1})).dedup_key("invoice-t1-p1"),
    )
    .await;
    let second = push(
        &app,
        NewJob::new("probe", json!({"n": 2})).dedup_key("invoice-t1-p1"),
    )
    .await;
    assert!(first.is_some());
    assert!(second.is_none(), "same kind and key: one job");
    assert_eq!(worker.run_pending().await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(status(&app, first.unwrap()).await.status, "done");
}

#[tokio::test]
async fn failures_retry_later_with_stored_backoff_then_die_and_stay_visible() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let slow_retry = WorkerSettings {
        backoff_base: Duration::from_secs(3600),
        ..quick()
    };
    let (worker, runs) = make_worker(&app, Behaviour::Fail, slow_retry);
    let id = push(&app, NewJob::new("probe", json!({})).max_attempts(3))
        .await
        .unwrap();
    assert_eq!(worker.run_pending().await.unwrap(), 1);
    assert_eq!(
        worker.run_pending().await.unwrap(),
        0,
        "the retry is an hour away"
    );
    let after_failure = status(&app, id).await;
    assert_eq!(after_failure.status, "pending");
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
    assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 3));
    assert_eq!(impatient.run_pending().await.unwrap(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    let permanent = push(&app, NewJob::new("probe", json!({})).max_attempts(5))
        .await
        .unwrap();
    let (refusing, _) = make_worker(&app, Behaviour::FailPermanently, quick());
    refusing.run_pending().await.unwrap();
    assert_eq!(
        status(&app, permanent).await.status,
        "dead",
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
    let id = push(&app, NewJob::new("probe", json!({}))).await.unwrap();
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
    assert_eq!((done.status.as_str(), done.attempts), ("done", 2));
}

#[tokio::test]
async fn a_running_job_keeps_its_lease_while_the_handler_works() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let id = push(&app, NewJob::new("probe", json!({}))).await.unwrap();
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
    assert_eq!(status(&app, id).await.status, "done");
}

#[tokio::test]
async fn scheduled_jobs_wait_for_their_time() {
    let app = TestApp::spawn_with(|c| c.workers.enabled = false).await;
    let at = chrono::Utc::now() + chrono::TimeDelta::milliseconds(400);
    push(&app, NewJob::new("probe", json!({})).run_at(at))
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
    let id = push(&app, NewJob::new("probe", json!({}))).await.unwrap();
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
    assert_eq!(status(&app, id).await.status, "done");
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempts_and_ends_dead() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let (worker, runs) = make_worker(&app, Behaviour::Panic, quick());
    let id = push(&app, NewJob::new("probe", json!({})).max_attempts(3))
        .await
        .unwrap();
    // Each attempt panics; the worker survives and counts it as a failure.
    for _ in 0..5 {
        worker.run_pending().await.unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "never past its attempts");
    let job = status(&app, id).await;
    assert_eq!(job.status, "dead");
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
    let id = push(&app, NewJob::new("probe", json!({})).max_attempts(2))
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
    assert_eq!(job.status, "dead");
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
    let id = push(&app, NewJob::new("probe", json!({})).max_attempts(1))
        .await
        .unwrap();
    worker.run_pending().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let job = status(&app, id).await;
    assert_eq!(job.status, "dead");
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("deadline"),
        "{:?}",
        job.last_error
    );
}
