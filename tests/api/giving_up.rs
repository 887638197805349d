//! Jobs that cannot finish (the payment provider unreachable until their attempts run
//! out) must not leave a tenant mid-transition or a signup pending forever.

use std::sync::Arc;

use integration_tests::{STRIPE_TEST_KEY, TestApp};
use jobs::{Worker, WorkerSettings};
use lifecycle::PlanChangeWorkflow;
use onboarding::OnboardingWorkflow;
use payments::{PaymentProvider, StripeProvider};
use serde_json::{Value, json};

/// A Stripe client pointed at a port nothing listens on.
fn unreachable_stripe() -> Arc<dyn PaymentProvider> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    Arc::new(
        StripeProvider::new(
            STRIPE_TEST_KEY,
            &format!("http://127.0.0.1:{port}"),
            std::time::Duration::from_secs(10),
        )
        .unwrap(),
    )
}

/// Makes every queued job's current run its last.
async fn last_attempt(app: &TestApp) {
    let mut tx = app.db.system_tx("test").await.unwrap();
    sqlx::query("UPDATE jobs SET max_attempts = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_plan_change_out_of_attempts_returns_the_tenant_to_active() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("free").await;
    // A customer id, so leaving the free plan has to ask Stripe (which is down) for a
    // payment method.
    let mut tx = app.db.system_tx("test").await.unwrap();
    sqlx::query("UPDATE tenants SET stripe_customer_id = 'cus_unreachable' WHERE id = $1")
        .bind(tenant.id.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/plan-changes",
            &json!({"plan": "pro"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    last_attempt(&app).await;
    let worker = Worker::new(&app.db, WorkerSettings::default());
    PlanChangeWorkflow::new(app.db.clone(), Some(unreachable_stripe()))
        .register_with(worker)
        .run_pending()
        .await
        .unwrap();

    let view = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(
        (view["state"].as_str(), view["plan"].as_str()),
        (Some("active"), Some("free"))
    );
    let id = accepted["transition"]["id"].as_str().unwrap();
    let transition = app
        .get_json(&tenant.api_key, &format!("/v1/tenant/transitions/{id}"))
        .await;
    assert_eq!(transition["state"], "failed", "{transition}");
    // And the next change is taken, not refused as in progress.
    let again = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/plan-changes",
            &json!({"plan": "pro"}),
        )
        .await;
    assert_eq!(again.status(), 202);
}

#[tokio::test]
async fn a_signup_out_of_attempts_fails_and_frees_its_email() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let body = json!({"email": "stuck@example.com", "company": "Stuck Ltd", "plan": "starter", "payment_method": "pm_card_visa"});
    let created: Value = app
        .post("/v1/signups")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    last_attempt(&app).await;
    let workflow = OnboardingWorkflow::new(
        app.db.clone(),
        Some(unreachable_stripe()),
        saas_core::BillingCycle::Months(1),
    );
    Worker::new(&app.db, WorkerSettings::default())
        .register(workflow)
        .run_pending()
        .await
        .unwrap();
    let signup: Value = app
        .get(&format!("/v1/signups/{}", created["id"].as_str().unwrap()))
        .bearer_auth(created["signup_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(signup["status"], "failed", "{signup}");
    // The same person and company may try again.
    let retry = app.post("/v1/signups").json(&body).send().await.unwrap();
    assert_eq!(retry.status(), 202);
}
