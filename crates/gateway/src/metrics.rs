//! The Prometheus recorder. One per process: the first app to start installs it and every
//! later one (tests start many) shares it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from a fast cached read to a slow Stripe round trip.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if something else installed a recorder first; then that one
            // receives our metrics and this handle renders an empty page, which the
            // metrics test would catch.
            let _ = metrics::set_global_recorder(recorder);
            create_alerted_counters();
            handle
        })
        .clone()
}

/// The counters deploy/prometheus/alerts.yml takes rates of, created at zero: a counter
/// otherwise appears only with its first event, and until then an alert on it can never
/// fire (nor be seen to be wired up).
fn create_alerted_counters() {
    for name in [
        "usage_relay_errors_total",
        "invoice_run_errors_total",
        "jobs_abandoned_total",
        "notifications_failed_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::counter!("ingest_batches_refused_total", "reason" => "tenant_concurrency")
        .increment(0);
}
