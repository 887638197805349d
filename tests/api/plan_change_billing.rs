//! What a plan change does to the bill: usage before it is rated under the old plan and
//! usage after it under the new, so that no change of plan lowers what was used and owed,
//! raises it, or makes a period that cannot be invoiced.

use std::time::{Duration, Instant};

use integration_tests::{TestApp, TestTenant, error_code};
use serde_json::{Value, json};

fn cycle(seconds: &'static str) -> impl FnOnce(&mut gateway::Config) {
    move |config| {
        config.billing.cycle = seconds.parse().unwrap();
        config.billing.close_grace_ms = 300;
        // The tests start the invoice runs themselves.
        config.billing.run_interval_ms = 3_600_000;
        config.workers.relay_idle_ms = 20;
    }
}

async fn tenant_on(app: &TestApp, plan: &str, seconds: u64) -> TestTenant {
    app.create_tenant_on_cycle(
        plan,
        saas_core::TenantState::Active,
        false,
        saas_core::BillingCycle::Seconds(seconds),
    )
    .await
}

async fn queries(app: &TestApp, tenant: &TestTenant, id: &str, value: u64) -> reqwest::Response {
    app.ingest(
        &tenant.api_key,
        json!([{"id": id, "metric": "queries", "value": value}]),
    )
    .await
}

/// Changes the plan at once, as `who` asks (the tenant, or an operator), and waits for it.
async fn change_now(app: &TestApp, tenant: &TestTenant, plan: &str, by_operator: bool) {
    let response = if by_operator {
        let to = "downgrading";
        app.operator_post(
            &format!("/v1/admin/tenants/{}/transitions", tenant.id),
            &json!({"to": to, "plan": plan, "effective": "now", "reason": "plan change"}),
        )
        .await
    } else {
        app.post_as(
            &tenant.api_key,
            "/v1/tenant/plan-changes",
            &json!({"plan": plan, "effective": "now"}),
        )
        .await
    };
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let me = app.get_json(&tenant.api_key, "/v1/tenant").await;
        if me["plan"] == plan && me["state"] == "active" {
            return;
        }
        assert!(Instant::now() < deadline, "plan change stuck: {me}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Amounts of the usage lines of `invoice` for `metric`, with their quantities.
fn usage_lines(invoice: &Value, metric: &str) -> Vec<(u64, i64)> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["metric"] == metric)
        .map(|l| {
            (
                l["quantity"].as_u64().unwrap(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The period's invoice, once the period has ended and a run has made it.
async fn invoiced(app: &TestApp, tenant: &TestTenant, wait: Duration) -> Value {
    tokio::time::sleep(wait).await;
    app.drain_relay().await;
    let run = app
        .operator_post("/v1/admin/billing/runs", &json!({}))
        .await;
    assert_eq!(run.status(), 200);
    let report: Value = run.json().await.unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    let listed = app.get_json(&tenant.api_key, "/v1/invoices").await;
    listed["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "period")
        .cloned()
        .unwrap_or_else(|| panic!("no invoice: {listed}"))
}

#[tokio::test]
async fn a_downgrade_to_free_after_an_overage_still_bills_the_overage() {
    let app = TestApp::spawn_with(cycle("5s")).await;
    let tenant = tenant_on(&app, "starter", 5).await;
    // 300,000 queries on starter: 100,000 included, 200,000 at 50 per 1,000.
    assert_eq!(queries(&app, &tenant, "q1", 300_000).await.status(), 202);
    change_now(&app, &tenant, "free", false).await;
    let upcoming = app
        .get("/v1/invoices/upcoming")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(upcoming.status(), 200, "a plan change never makes a 5xx");
    let upcoming: Value = upcoming.json().await.unwrap();
    assert_eq!(
        usage_lines(&upcoming, "queries"),
        [(100_000, 0), (200_000, 10_000)],
        "{upcoming}"
    );
    // Free's hard limit stands from the change on.
    let refused = queries(&app, &tenant, "q2", 1).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(error_code(refused).await, "quota_exceeded");
    let invoice = invoiced(&app, &tenant, Duration::from_millis(5_500)).await;
    assert_eq!(
        usage_lines(&invoice, "queries"),
        [(100_000, 0), (200_000, 10_000)]
    );
    assert_eq!(
        invoice["total"], 10_000,
        "the overage, and free's next period: {invoice}"
    );
    let reconciliation = app
        .operator_get(&format!(
            "/v1/admin/billing/reconciliation?tenant_id={}",
            tenant.id
        ))
        .await;
    assert_eq!(reconciliation["mismatches"], json!([]), "{reconciliation}");
}

#[tokio::test]
async fn an_upgrade_before_the_period_ends_keeps_the_overage_owed() {
    let app = TestApp::spawn_with(cycle("3600s")).await;
    let tenant = tenant_on(&app, "starter", 3600).await;
    assert_eq!(queries(&app, &tenant, "q1", 300_000).await.status(), 202);
    change_now(&app, &tenant, "pro", false).await;
    // After the upgrade, pro's included queries (1,000,000) cover what follows.
    assert_eq!(queries(&app, &tenant, "q2", 500_000).await.status(), 202);
    let upcoming = app.get_json(&tenant.api_key, "/v1/invoices/upcoming").await;
    let lines = usage_lines(&upcoming, "queries");
    assert_eq!(
        lines,
        [(100_000, 0), (200_000, 10_000), (500_000, 0)],
        "the overage under starter stays; pro's included units take the rest: {upcoming}"
    );
    let quantities: u64 = lines.iter().map(|(q, _)| q).sum();
    assert_eq!(quantities, 800_000, "every query billed once");
}

#[tokio::test]
async fn an_operator_downgrade_does_not_charge_earlier_usage_at_the_new_price() {
    let app = TestApp::spawn_with(cycle("3600s")).await;
    let tenant = tenant_on(&app, "pro", 3600).await;
    // Within pro's 1,000,000 included queries.
    assert_eq!(queries(&app, &tenant, "q1", 900_000).await.status(), 202);
    change_now(&app, &tenant, "starter", true).await;
    assert_eq!(queries(&app, &tenant, "q2", 1_000).await.status(), 202);
    let upcoming = app.get_json(&tenant.api_key, "/v1/invoices/upcoming").await;
    // Under starter the first 900,000 would owe 40,000; they were used on pro, for
    // nothing. The 1,000 after the change are past starter's included units: 50.
    assert_eq!(
        usage_lines(&upcoming, "queries"),
        [(900_000, 0), (1_000, 50)],
        "{upcoming}"
    );
}
