//! Background work run inside the service process, each part until the stop signal, as
//! the process's roles say (`roles.*`; all on by default).

use std::time::Duration;

use jobs::{Worker, WorkerSettings};
use lifecycle::{PlanChangeWorkflow, WinbackWorkflow};
use metering::relay::Relay;
use onboarding::OnboardingWorkflow;
use privacy::ErasureWorkflow;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

mod scheduler;

pub fn spawn(state: &AppState, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let roles = state.config.roles;
    let mut workers = Vec::new();
    if roles.relay {
        let relay = Relay::new(
            state.db.clone(),
            state.clickhouse.clone(),
            state.config.relay_settings(),
        );
        workers.push(tokio::spawn(relay.run(stop.clone())));
    }
    if roles.scheduler {
        workers.extend(scheduler::spawn(state, stop.clone()));
    }
    if roles.jobs {
        workers.push(tokio::spawn(job_worker(state).run(stop.clone())));
        workers.push(tokio::spawn(webhook_worker(state).run(stop.clone())));
    }
    if roles.outbox {
        match state.config.mailer() {
            Ok(Some(mailer)) => workers.push(tokio::spawn(outbox::run(
                state.db.clone(),
                mailer,
                Duration::from_millis(state.config.smtp.poll_ms),
                stop,
            ))),
            Ok(None) => tracing::info!("SMTP not configured: notifications stay in the outbox"),
            // Checked when the configuration was loaded.
            Err(error) => tracing::error!(%error, "SMTP settings rejected; outbox not delivered"),
        }
    }
    workers
}

/// The worker of webhook deliveries: a worker of its own, so that a burst of them (or
/// slow receivers) never keeps the other jobs waiting.
fn webhook_worker(state: &AppState) -> Worker {
    let config = &state.config;
    Worker::new(
        &state.db,
        WorkerSettings {
            concurrency: config.webhooks.concurrency,
            poll_interval: Duration::from_millis(config.workers.job_poll_ms),
            // Far past an attempt's timeout: a lease never runs out under a live one.
            lease: Duration::from_millis(config.webhooks.timeout_ms) * 6,
            ..WorkerSettings::default()
        },
    )
    .register(webhooks::Deliverer::new(
        state.db.clone(),
        state.webhooks.clone(),
        config.webhooks.retry_pauses.0.clone(),
    ))
}

/// The job worker, with a handler for every kind of job but webhook deliveries.
fn job_worker(state: &AppState) -> Worker {
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
    jobs = jobs.register(billing::invoices::InvoiceRunner::new(
        state.db.clone(),
        state.clickhouse.clone(),
        state.clock.clone(),
        Duration::from_millis(config.billing.close_grace_ms),
        state.collection(),
    ));
    if let Some(collector) = state.collector() {
        jobs = collector.register_with(jobs);
    }
    jobs.register(ErasureWorkflow::new(
        state.db.clone(),
        state.clickhouse.clone(),
        state.payments.clone(),
        Some(billing::final_invoice::FinalBiller::new(
            state.db.clone(),
            state.collector(),
        )),
    ))
}
