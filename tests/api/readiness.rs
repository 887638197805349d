//! /readiness against the live stack, and with parts of it missing.

use integration_tests::{FaultProxy, OPERATOR_TOKEN, Stack, TestApp, error_code};
use serde_json::Value;

/// A live run, as an operator asks it.
async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app
        .get("/readiness")
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// What anyone without the token gets.
async fn public_readiness(app: &TestApp) -> (u16, Value) {
    let response = app.get("/readiness").send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn status_of<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))["status"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn all_four_checks_pass_on_the_live_stack() {
    let app = TestApp::spawn().await;
    let (status, report) = readiness(&app).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["ready"], true);
    assert_eq!(
        (report["passed"].as_u64(), report["total"].as_u64()),
        (Some(4), Some(4))
    );
    for name in [
        "usage_metering",
        "stripe_billing",
        "self_service_onboarding",
        "lifecycle_state_machine",
    ] {
        assert_eq!(status_of(&report, name), "pass", "{report:#}");
    }
    for check in report["checks"].as_array().unwrap() {
        assert!(check["duration_ms"].is_u64());
        assert!(!check["detail"].as_str().unwrap().is_empty());
    }

    // The readable summary, in the notebook's style.
    let text = app
        .get("/readiness")
        .bearer_auth(OPERATOR_TOKEN)
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.matches('✅').count(), 4, "{text}");
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("4/4 checks ready"),
        "{text}"
    );

    // Probe tenants are never shown to operators.
    let tenants = app.operator_get("/v1/admin/tenants").await;
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 0, "{tenants}");
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (synthetic, live): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE synthetic), count(*) FILTER (WHERE NOT synthetic) FROM tenants",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(synthetic >= 2, "the probes exist");
    assert_eq!(live, 0);
}

#[tokio::test]
async fn clickhouse_down_fails_metering_and_the_rest_still_report() {
    let address = Stack::from_env()
        .clickhouse_url
        .trim_start_matches("http://")
        .to_owned();
    let proxy = FaultProxy::start(address).await;
    let url = proxy.url();
    let app = TestApp::spawn_with(move |config| config.clickhouse.url = url).await;
    proxy.cut();
    let (status, report) = readiness(&app).await;
    assert_eq!(status, 503, "{report:#}");
    assert_eq!(report["ready"], false);
    assert_eq!(status_of(&report, "usage_metering"), "fail");
    for name in [
        "stripe_billing",
        "self_service_onboarding",
        "lifecycle_state_machine",
    ] {
        assert_eq!(status_of(&report, name), "pass", "{name}: {report:#}");
    }
}

#[tokio::test]
async fn without_a_stripe_key_billing_is_skipped_and_not_ready() {
    let app = TestApp::spawn_with(|config| config.stripe.secret_key = None).await;
    let (status, report) = readiness(&app).await;
    assert_eq!(status, 503);
    assert_eq!(status_of(&report, "stripe_billing"), "skip");
    assert_eq!(report["passed"], 3, "{report:#}");
}

#[tokio::test]
async fn concurrent_callers_share_one_run() {
    let app = TestApp::spawn_with(|config| config.readiness.cache_ms = 0).await;
    let reports = futures_util::future::join_all((0..5).map(|_| readiness(&app))).await;
    let first = &reports[0].1["checked_at"];
    assert!(
        reports.iter().all(|(_, r)| &r["checked_at"] == first),
        "one run for all"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("readiness_runs_total 1"), "{metrics}");
    // Later, with no result reuse configured, a new run.
    let (_, again) = readiness(&app).await;
    assert_ne!(&again["checked_at"], first);
}

#[tokio::test]
async fn replicas_asked_at_once_share_one_run_and_none_fails_falsely() {
    let first = TestApp::spawn_with(|config| config.readiness.cache_ms = 0).await;
    let second = first.spawn_replica(|_| {}).await;
    let third = first.spawn_replica(|_| {}).await;
    let replicas = [&first, &second, &third, &first, &second, &third];
    let reports = futures_util::future::join_all(replicas.map(readiness)).await;
    for (status, report) in &reports {
        assert_eq!(*status, 200, "{report:#}");
    }
    let first_run = &reports[0].1["checked_at"];
    assert!(
        reports.iter().all(|(_, r)| &r["checked_at"] == first_run),
        "one run, on one replica, for all: {reports:?}"
    );
    // The replicas share one metrics recorder here: one run in all.
    let metrics = first.metrics().await;
    assert!(metrics.contains("readiness_runs_total 1"), "{metrics}");
    // Anyone asking any replica gets the stored result, with its age.
    let (status, public) = public_readiness(&third).await;
    assert_eq!(status, 200);
    assert_eq!(&public["checked_at"], first_run);
    assert!(public["age_ms"].as_u64().is_some(), "{public}");
}

#[tokio::test]
async fn the_cli_prints_the_summary_of_a_running_instance() {
    let app = TestApp::spawn().await;
    let output = tokio::process::Command::new(integration_tests::saas_binary())
        .args(["readiness", "--url", &app.address])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("4/4 checks ready"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with('✅')).count(),
        4,
        "{text}"
    );

    // With the operator token, a live run that says what each check saw.
    let live = tokio::process::Command::new(integration_tests::saas_binary())
        .args(["readiness", "--url", &app.address])
        .env("SAAS_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .output()
        .await
        .unwrap();
    let live_text = String::from_utf8(live.stdout).unwrap();
    assert!(live.status.success(), "{live_text}");
    assert!(
        live_text.contains("synthetic signup completed"),
        "{live_text}"
    );
    assert!(!text.contains("synthetic signup completed"), "{text}");

    let down = tokio::process::Command::new(integration_tests::saas_binary())
        .args(["readiness", "--url", "http://127.0.0.1:9"])
        .output()
        .await
        .unwrap();
    assert!(!down.status.success());
}

#[tokio::test]
async fn without_the_operator_token_the_latest_result_comes_without_internals() {
    let app = TestApp::spawn_with(|config| {
        config.readiness.cache_ms = 0;
        config.readiness.public_max_age_ms = 600_000;
    })
    .await;
    let (status, first) = public_readiness(&app).await;
    assert_eq!(status, 200, "{first:#}");
    for check in first["checks"].as_array().unwrap() {
        assert_eq!(check["status"], "pass");
        assert!(check.get("detail").is_none(), "{check}");
    }
    // Asking again runs nothing: the same result, however often anyone asks.
    for _ in 0..3 {
        let (_, again) = public_readiness(&app).await;
        assert_eq!(again["checked_at"], first["checked_at"]);
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains("readiness_runs_total 1"), "{metrics}");
    // The operator gets a live run, with what each check saw.
    let (status, live) = readiness(&app).await;
    assert_eq!(status, 200);
    assert_ne!(live["checked_at"], first["checked_at"]);
    for check in live["checks"].as_array().unwrap() {
        assert!(!check["detail"].as_str().unwrap().is_empty(), "{check}");
    }
    // A wrong token is refused, not served.
    let response = app
        .get("/readiness")
        .bearer_auth("not-the-operator-token-0000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_operator_token");
}

/// Rows in every table the probes write to.
async fn probe_footprint(app: &TestApp) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in [
        "tenants",
        "signups",
        "signup_steps",
        "api_keys",
        "tenant_transitions",
        "tenant_deletions",
        "jobs",
        "usage_counters",
        "audit_log",
        "notifications",
    ] {
        let mut tx = app.db.system_tx("test footprint").await.unwrap();
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        counts.push((table.to_owned(), count));
    }
    counts
}

/// A live run, then until its erasure and plan-change jobs are done.
async fn run_and_settle(app: &TestApp) {
    let (status, report) = readiness(app).await;
    assert_eq!(status, 200, "{report:#}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut tx = app.db.system_tx("test jobs").await.unwrap();
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'pending'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        if pending == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "probe jobs stuck");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn repeated_runs_leave_nothing_that_grows() {
    let started = chrono::Utc::now().timestamp();
    let app = TestApp::spawn_with(|config| config.readiness.cache_ms = 0).await;
    run_and_settle(&app).await;
    run_and_settle(&app).await;
    let after_two = probe_footprint(&app).await;
    for _ in 0..3 {
        run_and_settle(&app).await;
    }
    let after_five = probe_footprint(&app).await;
    assert_eq!(after_five, after_two, "probing must not grow the store");
    let audit = after_five.iter().find(|(t, _)| t == "audit_log").unwrap().1;
    assert_eq!(audit, 0, "probes stay out of the audit log");
    // No customer is made at Stripe for a probe.
    let customers = integration_tests::stripe_get("/v1/customers?limit=100").await;
    let probes = customers["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["created"].as_i64().is_some_and(|at| at >= started)
                && c["email"]
                    .as_str()
                    .is_some_and(|email| email.ends_with("@readiness.invalid"))
        })
        .count();
    assert_eq!(probes, 0, "{customers}");
}

#[tokio::test]
async fn the_scheduler_keeps_a_fresh_result_without_anyone_asking() {
    let app = TestApp::spawn_with(|config| {
        config.readiness.run_interval_ms = 3_000;
        config.readiness.public_max_age_ms = 600_000;
    })
    .await;
    let stored = || async {
        let mut tx = app.db.system_tx("test read").await.unwrap();
        let (runs, newest): (i64, Option<Value>) = sqlx::query_as(
            "SELECT count(*), (SELECT report FROM readiness_reports ORDER BY id DESC LIMIT 1) \
             FROM readiness_reports",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        (runs, newest)
    };
    // Nobody has asked: the scheduler runs the checks, again once the result is an
    // interval old.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let newest = loop {
        let (runs, newest) = stored().await;
        if runs >= 2 {
            break newest.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{runs} scheduled runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(newest["ready"], true, "{newest:#}");
    // A caller reads the stored result rather than starting a run.
    let runs_before = stored().await.0;
    let (status, report) = public_readiness(&app).await;
    assert_eq!(status, 200, "{report:#}");
    let (runs_after, latest) = stored().await;
    assert!(
        runs_after - runs_before <= 1,
        "{runs_before} -> {runs_after}"
    );
    // A stored result has an age; a run of the caller's own would be brand new.
    assert!(report["age_ms"].as_u64().unwrap() > 0, "{report:#}");
    let latest = latest.unwrap();
    assert!(
        report["checked_at"] == newest["checked_at"]
            || report["checked_at"] == latest["checked_at"],
        "{report:#}"
    );
}
