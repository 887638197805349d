//! Background workers run inside the service process, each until the stop signal.

use std::time::Duration;

use jobs::{Worker, WorkerSettings};
use lifecycle::{PlanChangeWorkflow, WinbackWorkflow};
use metering::relay::Relay;
use onboarding::OnboardingWorkflow;
use privacy::ErasureWorkflow;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

pub fn spawn(state: &AppState, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let relay = Relay::new(
        state.db.clone(),
        state.clickhouse.clone(),
        state.config.relay_settings(),
    );
    let config = &state.config;
    let onboarding = OnboardingWorkflow::new(
        state.db.clone(),
        state.payments.clone(),
        config.billing_cycle(),
    );
    let mut jobs = Worker::new(
        &state.db,
        WorkerSettings {
            concurrency: config.workers.job_concurrency,
            poll_interval: Duration::from_millis(config.workers.job_poll_ms),
            ..WorkerSettings::default()
        },
    )
    .register(onboarding);
    jobs = PlanChangeWorkflow::new(state.db.clone(), state.payments.clone()).register_with(jobs);
    jobs = jobs.register(WinbackWorkflow::new(
        state.db.clone(),
        config.winback_schedule(),
    ));
    if let Some(collector) = state.collector() {
        jobs = collector.register_with(jobs);
    }
    jobs = jobs.register(ErasureWorkflow::new(
        state.db.clone(),
        state.clickhouse.clone(),
        state.payments.clone(),
        Some(billing::final_invoice::FinalBiller::new(
            state.db.clone(),
            state.collector(),
        )),
    ));
    let mut workers = vec![
        tokio::spawn(relay.run(stop.clone())),
        tokio::spawn(jobs.run(stop.clone())),
        tokio::spawn(invoice_runs(state.clone(), stop.clone())),
        tokio::spawn(audit_sealer(state.clone(), stop.clone())),
    ];
    match config.mailer() {
        Ok(Some(mailer)) => workers.push(tokio::spawn(outbox::run(
            state.db.clone(),
            mailer,
            Duration::from_millis(config.smtp.poll_ms),
            stop,
        ))),
        Ok(None) => tracing::info!("SMTP not configured: notifications stay in the outbox"),
        // Checked when the configuration was loaded.
        Err(error) => tracing::error!(%error, "SMTP settings rejected; outbox not delivered"),
    }
    workers
}

/// How often waiting audit entries are sealed into the chain.
const AUDIT_SEAL_INTERVAL: Duration = Duration::from_secs(1);

/// Seals appended audit entries into the hash chain, a batch per short transaction.
/// Several instances may run it: the chain head's lock orders them.
async fn audit_sealer(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match tenancy::audit::seal_pending(&state.db).await {
            Ok(sealed) => {
                metrics::counter!("audit_entries_sealed_total").increment(sealed);
                // A full batch: more are waiting, go on at once.
                if sealed >= u64::try_from(tenancy::audit::SEAL_BATCH).unwrap_or(u64::MAX) {
                    continue;
                }
                AUDIT_SEAL_INTERVAL
            }
            Err(error) => {
                tracing::warn!(%error, "audit sealing failed; retrying");
                AUDIT_SEAL_INTERVAL
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// A collection still not done this long after its invoice was made has lost its job
/// (attempts used up in an outage): the invoice run queues it again.
const STALLED_COLLECTION: Duration = Duration::from_secs(3600);

/// Invoices ended periods every `billing.run_interval_ms`. Several instances may do this
/// at once: the invoices' unique key keeps it to one invoice per tenant and period.
async fn invoice_runs(state: AppState, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.config.billing.run_interval_ms);
    let grace = Duration::from_millis(state.config.billing.close_grace_ms);
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(error) = billing::invoices::run(
            &state.db,
            &state.clickhouse,
            state.clock.now(),
            grace,
            state.collection(),
        )
        .await
        {
            metrics::counter!("invoice_run_errors_total").increment(1);
            tracing::warn!(%error, "invoice run failed; retrying at the next interval");
        }
        if state.payments.is_some()
            && let Err(error) = billing::collection::requeue_stalled(
                &state.db,
                state.clock.now(),
                STALLED_COLLECTION,
            )
            .await
        {
            tracing::warn!(%error, "could not look for stalled collections");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
}
