//! Periodic work, done by one process at a time: the process that wins the election
//! (`db::leader`) queues invoice runs as jobs, requeues stalled collections, keeps the
//! usage ledger bounded, seals the audit chain, forgets idle rate-limit buckets and runs
//! the deep readiness checks; the others stand by and take over within seconds when it
//! goes. Everything here is also correct when done twice (unique keys, the chain head's
//! lock, the retention's own locks, the readiness run's lock), so the short overlap an
//! election can have costs only duplicated work.

use std::future::Future;
use std::time::Duration;

use db::leader::Election;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// How often waiting audit entries are sealed into the chain.
const AUDIT_SEAL_INTERVAL: Duration = Duration::from_secs(1);

/// A collection still not done this long after its invoice was made has lost its job
/// (attempts used up in an outage): the invoice run queues it again.
const STALLED_COLLECTION: Duration = Duration::from_secs(3600);

pub fn spawn(state: &AppState, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let (leading, election) = Election::new("scheduler").run(state.db.pool(), stop.clone());
    let every = |task| while_leading_task(state, &leading, &stop, task);
    let mut tasks = vec![
        election,
        every(|state| Box::pin(invoice_run(state))),
        every(|state| Box::pin(retention_pass(state))),
        every(|state| Box::pin(seal_audit(state))),
        every(|state| Box::pin(forget_idle_rate_limits(state))),
    ];
    if state.config.readiness.run_interval_ms > 0 {
        tasks.push(every(|state| Box::pin(deep_readiness(state))));
    }
    tasks
}

/// One periodic task of the scheduler: runs `task` again and again while this process
/// leads.
type Task = fn(AppState) -> std::pin::Pin<Box<dyn Future<Output = Duration> + Send>>;

fn while_leading_task(
    state: &AppState,
    leading: &watch::Receiver<bool>,
    stop: &watch::Receiver<bool>,
    task: Task,
) -> JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(while_leading(leading.clone(), stop.clone(), move || {
        task(state.clone())
    }))
}

/// Runs `task` again and again while this process leads, waiting between runs as long
/// as each run asks; idle while another process leads.
async fn while_leading<F, Fut>(
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    mut task: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = if *leading.borrow_and_update() {
            Some(task().await)
        } else {
            None
        };
        tokio::select! {
            _ = async { tokio::time::sleep(wait.unwrap_or_default()).await }, if wait.is_some() => {}
            changed = leading.changed() => {
                if changed.is_err() {
                    return; // the election ended: the process is stopping
                }
            }
            _ = stop.changed() => {}
        }
    }
}

/// Queues invoice jobs for the tenants due (any replica's job worker runs them), then
/// queues again collections whose jobs gave up.
async fn invoice_run(state: AppState) -> Duration {
    let grace = Duration::from_millis(state.config.billing.close_grace_ms);
    match billing::invoices::fan_out(&state.db, state.clock.now(), grace).await {
        Ok(billing::invoices::FanOut::Queued { tenants, jobs }) if jobs > 0 => {
            tracing::info!(tenants, jobs, "invoice jobs queued");
        }
        Ok(_) => {}
        Err(error) => {
            metrics::counter!("invoice_run_errors_total").increment(1);
            tracing::warn!(%error, "invoice jobs not queued; retrying at the next interval");
        }
    }
    if state.payments.is_some()
        && let Err(error) =
            billing::collection::requeue_stalled(&state.db, state.clock.now(), STALLED_COLLECTION)
                .await
    {
        tracing::warn!(%error, "could not look for stalled collections");
    }
    Duration::from_millis(state.config.billing.run_interval_ms)
}

/// Keeps the usage ledger bounded (see `metering::retention`) and measures it.
async fn retention_pass(state: AppState) -> Duration {
    let settings = state.config.retention_settings();
    if let Err(error) = metering::retention::run_pass(&state.db, &settings).await {
        tracing::warn!(%error, "usage ledger retention pass failed");
    }
    if let Err(error) = metering::retention::measure_ledger(&state.db).await {
        tracing::debug!(%error, "usage ledger size not measured");
    }
    settings.pass_interval()
}

/// Seals appended audit entries into the hash chain, a batch per short transaction; a
/// full batch means more are waiting, so the next one goes at once.
async fn seal_audit(state: AppState) -> Duration {
    match tenancy::audit::seal_pending(&state.db).await {
        Ok(sealed) => {
            metrics::counter!("audit_entries_sealed_total").increment(sealed);
            if sealed >= u64::try_from(tenancy::audit::SEAL_BATCH).unwrap_or(u64::MAX) {
                Duration::ZERO
            } else {
                AUDIT_SEAL_INTERVAL
            }
        }
        Err(error) => {
            tracing::warn!(%error, "audit sealing failed; retrying");
            AUDIT_SEAL_INTERVAL
        }
    }
}

/// Runs the deep readiness checks when the latest result, from any replica, is older
/// than the interval: `/readiness` callers then read a fresh stored result, and none
/// waits for a run (or can make the checks run more often).
async fn deep_readiness(state: AppState) -> Duration {
    let interval = Duration::from_millis(state.config.readiness.run_interval_ms);
    let report = state.readiness.report(&state, interval).await;
    if !report.ready {
        tracing::warn!(passed = report.passed, total = report.total, "not ready");
    }
    // Due again when this result is an interval old.
    interval.saturating_sub(Duration::from_millis(report.age_ms))
}

/// Deletes the rate-limit buckets whose whole allowance is back, once a minute.
async fn forget_idle_rate_limits(state: AppState) -> Duration {
    let forgotten = async {
        let mut conn = state.db.pool().acquire().await?;
        tenancy::rate_limits::forget_idle(&mut conn).await
    };
    if let Err(error) = forgotten.await {
        tracing::debug!(%error, "idle rate-limit buckets not deleted");
    }
    Duration::from_secs(60)
}
