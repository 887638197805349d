//! What a readiness run reports, and the cache that lets concurrent callers share one
//! run.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio::sync::Mutex;

use super::run;
use crate::state::AppState;

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
