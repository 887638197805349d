//! What a readiness run reports, and the cache that lets concurrent callers share one
//! run.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::run;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    /// Not configured: counts as not ready.
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub duration_ms: u64,
    /// What the check saw, errors included: shown to operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub ready: bool,
    pub passed: usize,
    pub total: usize,
    pub checks: Vec<Check>,
    pub duration_ms: u64,
    pub checked_at: chrono::DateTime<Utc>,
    /// How old this result is: it may come from an earlier run, on any replica.
    #[serde(default)]
    pub age_ms: u64,
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

/// How long a caller waits for another replica's run before running its own.
const RUN_WAIT: Duration = Duration::from_secs(120);
/// A run's lock outlives a frozen holder by this long at most (longer than any run).
const RUN_IDLE_LIMIT: Duration = Duration::from_secs(150);

/// One run at a time, in this process and across replicas; the latest result, from any
/// replica, reused while fresh.
#[derive(Default)]
pub struct ReadinessCache {
    last: Mutex<Option<(Instant, Report)>>,
}

impl ReadinessCache {
    /// The latest result, or a new run when it is older than `max_age`. Callers that
    /// arrive during a run, here or on another replica, wait for it and share its
    /// result.
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
        let usable = |age: Duration| age <= max_age || age <= arrived.elapsed();
        if let Some((at, report)) = last.as_ref()
            && usable(at.elapsed())
        {
            return aged(report, at.elapsed());
        }
        if let Some((report, age)) = stored(state).await
            && usable(age)
        {
            *last = Some((since(age), report.clone()));
            return aged(&report, age);
        }
        // One run at a time across replicas, so that their probes never collide; a caller
        // that waited for another replica's run takes its result.
        let exclusive =
            db::leader::exclusive(state.db.pool(), "readiness", RUN_WAIT, RUN_IDLE_LIMIT).await;
        if let Err(error) = &exclusive {
            tracing::warn!(%error, "readiness runs not serialised across replicas");
        }
        if let Some((report, age)) = stored(state).await
            && usable(age)
        {
            *last = Some((since(age), report.clone()));
            return aged(&report, age);
        }
        let report = run(state).await;
        match serde_json::to_value(&report) {
            Ok(json) => {
                if let Err(error) = tenancy::probes::store_report(&state.db, &json).await {
                    tracing::warn!(%error, "readiness report not stored");
                }
            }
            Err(error) => tracing::warn!(%error, "readiness report not stored"),
        }
        drop(exclusive);
        *last = Some((Instant::now(), report.clone()));
        report
    }

    /// The latest result without running anything (for the operator view): the latest
    /// any replica stored (every run is stored, this process's too), or, when none can
    /// be read, this process's own unless a run holds it now.
    pub async fn latest(&self, state: &AppState) -> Option<Report> {
        if let Some((report, age)) = stored(state).await {
            return Some(aged(&report, age));
        }
        let last = self.last.try_lock().ok()?;
        last.as_ref().map(|(at, report)| aged(report, at.elapsed()))
    }
}

/// The latest stored result, from whichever replica ran it, and its age.
async fn stored(state: &AppState) -> Option<(Report, Duration)> {
    match tenancy::probes::latest_report(&state.db).await {
        Ok(Some((json, age_secs))) => {
            let report = serde_json::from_value(json).ok()?;
            Some((report, Duration::from_secs_f64(age_secs.max(0.0))))
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, "stored readiness report not read");
            None
        }
    }
}

/// The instant `age` ago (now, if this process is younger than that).
fn since(age: Duration) -> Instant {
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

fn aged(report: &Report, age: Duration) -> Report {
    Report {
        age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        ..report.clone()
    }
}
