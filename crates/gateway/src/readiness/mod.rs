//! `/readiness`: the four checks, each exercising its component for real, with its own
//! time limit.
//!
//! 1. `usage_metering`: ClickHouse answers and has the schema; probe events of every
//!    metric, ingested through the real ledger path for a synthetic probe tenant, reach
//!    ClickHouse through the relay and read back exactly.
//! 2. `stripe_billing`: a Stripe key is set (test mode unless live mode is allowed), the
//!    Stripe API answers, and the probe's upcoming invoice, rated by the billing code,
//!    carries exactly the probe's usage.
//! 3. `self_service_onboarding`: a synthetic signup runs through the real workflow to
//!    `completed` within 60 s; the tenant it made is erased afterwards.
//! 4. `lifecycle_state_machine`: the transition table is consistent, and of two
//!    concurrent upgrades of a synthetic tenant exactly one is taken.
//!
//! Probe tenants are synthetic: never billed, never listed to operators, never in the
//! audit log, and purged at the start of each run, so probing leaves nothing that grows.
//! Concurrent callers share one run, and a result is reused for a short time, so the
//! endpoint cannot be used to load the system.

mod invoice;
mod report;
mod signup;
mod transitions;
mod usage;

use std::time::{Duration, Instant};

use chrono::Utc;
use saas_core::{BillingCycle, TenantId, TenantState};
use tenancy::tenants::NewTenant;
use uuid::Uuid;

use crate::state::AppState;

use invoice::stripe_billing;
pub use report::{Check, CheckStatus, ReadinessCache, Report};
use signup::self_service_onboarding;
use transitions::lifecycle_state_machine;
use usage::usage_metering;

/// The probe tenant that meters and is rated.
pub const USAGE_PROBE: TenantId =
    TenantId::from_uuid(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_5eed_0001));
/// The probe tenant whose plan is changed.
pub const LIFECYCLE_PROBE: TenantId =
    TenantId::from_uuid(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_5eed_0002));
/// The onboarding check fails above this, as the bridge target says.
pub(super) const ONBOARDING_LIMIT: Duration = Duration::from_secs(60);

pub(super) type Outcome = Result<(CheckStatus, String), String>;

async fn timed(name: &'static str, limit: Duration, check: impl Future<Output = Outcome>) -> Check {
    let started = Instant::now();
    let (status, detail) = match tokio::time::timeout(limit, check).await {
        Ok(Ok((status, detail))) => (status, detail),
        Ok(Err(detail)) => (CheckStatus::Fail, detail),
        Err(_) => (
            CheckStatus::Fail,
            format!("no answer within {:.0} s", limit.as_secs_f64()),
        ),
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    metrics::histogram!("readiness_check_seconds", "check" => name)
        .record(started.elapsed().as_secs_f64());
    Check {
        name: name.to_owned(),
        status,
        duration_ms,
        detail: Some(detail),
    }
}

pub(super) async fn run(state: &AppState) -> Report {
    let started = Instant::now();
    purge_probes(state).await;
    let limit = Duration::from_millis(state.config.readiness.check_timeout_ms);
    // Metering first: billing rates the usage it leaves. The other two run alongside.
    let metering_then_billing = async {
        let metering = timed("usage_metering", limit, usage_metering(state)).await;
        let billing = timed("stripe_billing", limit, stripe_billing(state)).await;
        (metering, billing)
    };
    let ((metering, billing), onboarding, lifecycle) = tokio::join!(
        metering_then_billing,
        timed(
            "self_service_onboarding",
            ONBOARDING_LIMIT,
            self_service_onboarding(state)
        ),
        timed(
            "lifecycle_state_machine",
            limit,
            lifecycle_state_machine(state)
        ),
    );
    let checks = vec![metering, billing, onboarding, lifecycle];
    let passed = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Pass)
        .count();
    metrics::counter!("readiness_runs_total").increment(1);
    Report {
        ready: passed == checks.len(),
        passed,
        total: checks.len(),
        checks,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        checked_at: Utc::now(),
        age_ms: 0,
    }
}

/// Removes what earlier runs left: erased onboarding probes whole, the standing probes'
/// finished transitions and old counters (`purge_readiness_probes` in the migrations).
/// Probes write no audit entries, so with this a run leaves nothing that grows.
async fn purge_probes(state: &AppState) {
    match tenancy::probes::purge(&state.db).await {
        Ok(rows) => tracing::debug!(rows, "readiness probes purged"),
        Err(error) => tracing::warn!(%error, "could not purge what readiness probes left"),
    }
}

/// Makes a probe tenant if it does not exist yet.
pub(super) async fn ensure_probe(
    state: &AppState,
    id: TenantId,
    name: &str,
    plan: &str,
    cycle: BillingCycle,
) -> Result<(), String> {
    let mut tx = state
        .db
        .system_tx("readiness probe")
        .await
        .map_err(|e| e.to_string())?;
    let exists = tenancy::tenants::get(&mut tx, id).await.is_ok();
    if !exists {
        tenancy::tenants::insert(
            &mut tx,
            &NewTenant {
                id,
                name: name.into(),
                email: None,
                state: TenantState::Active,
                plan_code: plan.into(),
                billing_anchor: Utc::now(),
                billing_cycle: cycle,
                synthetic: true,
                stripe_customer_id: None,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// Asks a running instance at `base_url` for its readiness summary (the CLI's
/// `saas readiness`): whether it is ready, and the text.
pub async fn ask(base_url: &str, operator_token: Option<&str>) -> anyhow::Result<(bool, String)> {
    let mut request = reqwest::Client::new()
        .get(format!("{}/readiness", base_url.trim_end_matches('/')))
        .header(reqwest::header::ACCEPT, "text/plain")
        .timeout(ONBOARDING_LIMIT + Duration::from_secs(30));
    if let Some(token) = operator_token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let ready = response.status().is_success();
    Ok((ready, response.text().await?))
}
