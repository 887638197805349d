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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use lifecycle::{Change, TransitionError, TransitionRequest};
use metering::event::UsageEvent;
use saas_core::{BillingCycle, Metric, SignupId, TenantId, TenantState};
use serde::Serialize;
use tenancy::audit::Actor;
use tenancy::tenants::NewTenant;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::state::AppState;

/// The probe tenant that meters and is rated.
pub const USAGE_PROBE: TenantId =
    TenantId::from_uuid(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_5eed_0001));
/// The probe tenant whose plan is changed.
pub const LIFECYCLE_PROBE: TenantId =
    TenantId::from_uuid(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_5eed_0002));
/// Probe events kept before they are cleaned out.
const PROBE_EVENTS_KEPT: u64 = 3_000;
/// The onboarding check fails above this, as the bridge target says.
const ONBOARDING_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    /// Not configured: counts as not ready.
    Skip,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub name: &'static str,
    pub status: CheckStatus,
    pub duration_ms: u64,
    /// What the check saw, errors included: shown to operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub ready: bool,
    pub passed: usize,
    pub total: usize,
    pub checks: Vec<Check>,
    pub duration_ms: u64,
    pub checked_at: chrono::DateTime<Utc>,
}

impl Report {
    /// The summary for people: one line per check, then the count and the time.
    pub fn as_text(&self) -> String {
        let mut text = String::new();
        for check in &self.checks {
            let detail = check.detail.as_deref().unwrap_or(match check.status {
                CheckStatus::Pass => "ok",
                CheckStatus::Fail => "failed",
                CheckStatus::Skip => "not configured",
            });
            let mark = if check.status == CheckStatus::Pass {
                "✅"
            } else {
                "⚠️"
            };
            let status = match check.status {
                CheckStatus::Pass => "",
                CheckStatus::Fail => "FAIL: ",
                CheckStatus::Skip => "SKIP: ",
            };
            text.push_str(&format!(
                "{mark} {}: {status}{} ({} ms)\n",
                check.name, detail, check.duration_ms
            ));
        }
        text.push_str(&format!(
            "{}/{} checks ready ({:.2} s)\n",
            self.passed,
            self.total,
            self.duration_ms as f64 / 1000.0
        ));
        text
    }

    /// The report for anyone who asks: what passed and how long it took, without what
    /// the checks saw (error text, versions, ids), which is for operators.
    pub fn without_internals(mut self) -> Report {
        for check in &mut self.checks {
            check.detail = None;
        }
        self
    }
}

/// One run at a time; the last result, reused while fresh.
#[derive(Default)]
pub struct ReadinessCache {
    last: Mutex<Option<(Instant, Report)>>,
}

impl ReadinessCache {
    /// The latest result, or a new run when it is older than `max_age`. Callers that
    /// arrive during a run wait for it and share its result.
    pub async fn report(&self, state: &AppState, max_age: Duration) -> Report {
        // The run goes on in its own task even if this request is given up (the request
        // timeout, a client hanging up): its clean-up still happens and its result is kept
        // for the next caller.
        let task_state = state.clone();
        let arrived = Instant::now();
        let task = tokio::spawn(async move {
            task_state
                .readiness
                .report_in_task(&task_state, max_age, arrived)
                .await
        });
        match task.await {
            Ok(report) => report,
            Err(error) => panic!("the readiness run panicked: {error}"),
        }
    }

    async fn report_in_task(
        &self,
        state: &AppState,
        max_age: Duration,
        arrived: Instant,
    ) -> Report {
        let mut last = self.last.lock().await;
        // Fresh enough, or finished while this caller waited for the run in progress.
        if let Some((at, report)) = last.as_ref()
            && (at.elapsed() <= max_age || *at >= arrived)
        {
            return report.clone();
        }
        let report = run(state).await;
        *last = Some((Instant::now(), report.clone()));
        report
    }

    /// The latest result without running anything (for the operator view).
    pub async fn latest(&self) -> Option<Report> {
        self.last
            .lock()
            .await
            .as_ref()
            .map(|(_, report)| report.clone())
    }
}

type Outcome = Result<(CheckStatus, String), String>;

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
        name,
        status,
        duration_ms,
        detail: Some(detail),
    }
}

async fn run(state: &AppState) -> Report {
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
async fn ensure_probe(
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

async fn usage_metering(state: &AppState) -> Outcome {
    let sink = &state.clickhouse;
    let version = sink
        .server_version()
        .await
        .map_err(|e| format!("ClickHouse unreachable: {e}"))?;
    if !sink.schema_present().await.map_err(|e| e.to_string())? {
        return Err("ClickHouse schema missing: run `saas migrate`".into());
    }
    ensure_usage_probe(state).await?;
    clean_probe_events(state).await?;

    let now = Utc::now();
    let run = Uuid::now_v7().simple().to_string();
    let events: Vec<UsageEvent> = Metric::ALL
        .iter()
        .enumerate()
        .map(|(i, metric)| UsageEvent {
            id: format!("readiness-{run}-{metric}"),
            metric: *metric,
            value: 1000 + i as u64,
            time: now.with_nanosecond(0).unwrap_or(now),
        })
        .collect();
    let acknowledged = Instant::now();
    let outcome = metering::ledger::ingest(&state.db, USAGE_PROBE, &events, 0, now)
        .await
        .map_err(|e| format!("ingest refused the probe: {e}"))?;
    if outcome.accepted != events.len() as u64 {
        return Err(format!(
            "ingest accepted {} of {} probe events",
            outcome.accepted,
            events.len()
        ));
    }
    // Visible in ClickHouse, through the relay, with the exact values.
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    loop {
        let arrived = sink
            .values_of(USAGE_PROBE, &ids)
            .await
            .map_err(|e| e.to_string())?;
        if arrived.len() == events.len() {
            for event in &events {
                if arrived.get(&event.id) != Some(&event.value) {
                    return Err(format!("{} read back wrong from ClickHouse", event.metric));
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok((
        CheckStatus::Pass,
        format!(
            "ClickHouse {version}; probe events of {} visible in {} ms",
            Metric::ALL.map(|m| m.as_str()).join(", "),
            acknowledged.elapsed().as_millis()
        ),
    ))
}

/// The probe that meters and is rated. An hour-long cycle keeps its periods, and so its
/// upcoming invoice, small.
async fn ensure_usage_probe(state: &AppState) -> Result<(), String> {
    ensure_probe(
        state,
        USAGE_PROBE,
        "readiness probe (usage)",
        "starter",
        BillingCycle::Seconds(3600),
    )
    .await
}

/// Keeps the probe's ledger and ClickHouse rows from growing without bound.
async fn clean_probe_events(state: &AppState) -> Result<(), String> {
    let count = state
        .clickhouse
        .event_count(USAGE_PROBE)
        .await
        .map_err(|e| e.to_string())?;
    if count > PROBE_EVENTS_KEPT {
        metering::erasure::erase_ledger(&state.db, USAGE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        state
            .clickhouse
            .erase_tenant(USAGE_PROBE, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn stripe_billing(state: &AppState) -> Outcome {
    let Some(key) = &state.config.stripe.secret_key else {
        return Ok((
            CheckStatus::Skip,
            "no Stripe key configured (SAAS_STRIPE__SECRET_KEY)".into(),
        ));
    };
    let key = secrecy::ExposeSecret::expose_secret(key);
    let live = key.contains("_live_");
    if live && !state.config.stripe.allow_live_mode {
        return Err("a live-mode key without stripe.allow_live_mode".into());
    }
    let payments = state
        .payments
        .as_ref()
        .ok_or("the Stripe client did not start")?;
    payments
        .ping()
        .await
        .map_err(|e| format!("Stripe API: {e}"))?;
    ensure_usage_probe(state).await?;

    let mut tx = state
        .db
        .tenant_tx(USAGE_PROBE)
        .await
        .map_err(|e| e.to_string())?;
    let now = Utc::now();
    let terms = metering::ledger::tenant_terms(&mut tx, USAGE_PROBE, now)
        .await
        .map_err(|e| format!("probe tenant: {e}"))?;
    let used = metering::ledger::period_usage(&mut tx, USAGE_PROBE, terms.period.start)
        .await
        .map_err(|e| e.to_string())?;
    let plan = tenancy::plans::get(&mut tx, &terms.plan_code)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    let usage: BTreeMap<Metric, u64> = Metric::ALL
        .iter()
        .map(|m| (*m, used.get(m).copied().unwrap_or(0)))
        .collect();
    let invoice = billing::rate(&plan, &usage).map_err(|e| format!("rating: {e}"))?;
    for (metric, used) in &usage {
        let included = plan.metrics.get(metric).map_or(0, |t| t.included);
        let lines = || {
            invoice
                .lines
                .iter()
                .filter(|line| line.metric == Some(*metric))
        };
        let billed: u64 = lines().map(|line| line.quantity).sum();
        let overage: u64 = lines()
            .filter(|line| line.kind == billing::LineKind::Overage)
            .map(|line| line.quantity)
            .sum();
        if billed != *used || overage != used.saturating_sub(included) {
            return Err(format!(
                "{metric}: the invoice carries {billed} ({overage} as overage) for a usage of {used}"
            ));
        }
    }
    let sum: i64 = invoice.lines.iter().map(|line| line.amount).sum();
    if sum != invoice.total {
        return Err(format!(
            "invoice total {} is not the sum of its lines {sum}",
            invoice.total
        ));
    }
    Ok((
        CheckStatus::Pass,
        format!(
            "{} mode; Stripe answers; upcoming invoice of {} lines ({} {}) matches the probe's usage",
            if live { "live" } else { "test" },
            invoice.lines.len(),
            invoice.total,
            invoice.currency
        ),
    ))
}

async fn self_service_onboarding(state: &AppState) -> Outcome {
    let started = Instant::now();
    let id = SignupId::new();
    let signup = onboarding::request::ValidSignup {
        email: format!("probe+{}@readiness.invalid", id.as_uuid().simple()),
        company: format!("Readiness probe {}", id.as_uuid().simple()),
        plan_code: "free".into(),
        payment_method: None,
        paid: false,
    };
    let application = onboarding::accept::Application {
        id,
        signup,
        scope: None,
        synthetic: true,
    };
    onboarding::accept::accept(&state.db, application)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let mut tx = state
            .db
            .system_tx("readiness signup read")
            .await
            .map_err(|e| e.to_string())?;
        let current = onboarding::store::get(&mut tx, id, false)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        match current.status {
            onboarding::store::SignupStatus::Completed => break,
            onboarding::store::SignupStatus::Failed => {
                return Err(format!(
                    "synthetic signup failed: {}",
                    current.failure_reason.unwrap_or_default()
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let took = started.elapsed();
    // Clean up: the probe's tenant is erased like any other (its Stripe customer too).
    let erase = TransitionRequest {
        tenant_id: TenantId::from_uuid(id.as_uuid()),
        change: Change::Erase,
        actor: Actor::System("readiness"),
        reason: Some("readiness probe cleanup".into()),
        request_id: None,
        idempotency_key: None,
    };
    lifecycle::transitions::begin(&state.db, &erase)
        .await
        .map_err(|e| format!("cleanup: {e}"))?;
    Ok((
        CheckStatus::Pass,
        format!(
            "synthetic signup completed in {:.2} s (limit 60 s)",
            took.as_secs_f64()
        ),
    ))
}

async fn lifecycle_state_machine(state: &AppState) -> Outcome {
    lifecycle::state_machine::check_table()
        .map_err(|problem| format!("transition table: {problem}"))?;
    ensure_probe(
        state,
        LIFECYCLE_PROBE,
        "readiness probe (lifecycle)",
        "starter",
        BillingCycle::Months(1),
    )
    .await?;
    // Back on the starting plan if an earlier run stopped half-way.
    let current = wait_settled(state).await?;
    if current != "starter" {
        change_plan(state, "starter")
            .await
            .map_err(|e| format!("reset: {e}"))?;
        wait_settled(state).await?;
    }
    let (first, second) = tokio::join!(change_plan(state, "pro"), change_plan(state, "pro"));
    let accepted = [&first, &second].iter().filter(|r| r.is_ok()).count();
    let rejected = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(TransitionError::InProgress)))
        .count();
    if (accepted, rejected) != (1, 1) {
        return Err(format!(
            "two concurrent upgrades: {accepted} accepted, {rejected} rejected as in progress ({first:?}, {second:?})"
        ));
    }
    let upgraded = wait_settled(state).await?;
    if upgraded != "pro" {
        return Err(format!("the upgrade ended on {upgraded}"));
    }
    change_plan(state, "starter")
        .await
        .map_err(|e| format!("reset: {e}"))?;
    wait_settled(state).await?;
    Ok((
        CheckStatus::Pass,
        "transition table consistent; of two concurrent upgrades one was taken, one refused".into(),
    ))
}

async fn change_plan(
    state: &AppState,
    plan: &str,
) -> Result<lifecycle::Transition, TransitionError> {
    lifecycle::transitions::begin(
        &state.db,
        &TransitionRequest {
            tenant_id: LIFECYCLE_PROBE,
            change: Change::Plan {
                plan: plan.into(),
                at_once: true,
            },
            actor: Actor::System("readiness"),
            reason: Some("readiness probe".into()),
            request_id: None,
            idempotency_key: None,
        },
    )
    .await
}

/// Waits until the lifecycle probe is `active` (its job done); returns its plan.
async fn wait_settled(state: &AppState) -> Result<String, String> {
    loop {
        let mut tx = state
            .db
            .tenant_tx(LIFECYCLE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        let tenant = tenancy::tenants::get(&mut tx, LIFECYCLE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        if tenant.state == TenantState::Active {
            return Ok(tenant.plan_code);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
