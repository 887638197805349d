//! Stripe webhooks: signatures checked on the raw body, events taken once, objects
//! confirmed with Stripe, any arrival order ending in the same state.

use std::time::Duration;

use integration_tests::{TestApp, error_code, stripe_get, stripe_post};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::collection::{
    invoiced_with_a_declining_card, set_default_card, short_cycles, stored_invoices,
    stripe_customer, wait_for, wait_until_suspended,
};

const SECRET: &str = "whsec_test_endpoint_secret";

async fn spawn() -> TestApp {
    TestApp::spawn_with(|config| {
        short_cycles("2s", "1h")(config);
        config.stripe.webhook_secret = Some(SecretString::from(SECRET));
    })
    .await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn deliver(app: &TestApp, body: &[u8], signature: Option<String>) -> reqwest::Response {
    let mut request = app
        .post("/webhooks/stripe")
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.unwrap()
}

async fn deliver_signed(app: &TestApp, event: &Value) -> Value {
    let body = serde_json::to_vec(event).unwrap();
    let response = deliver(
        app,
        &body,
        Some(billing::webhooks::sign(&body, SECRET, now())),
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn invoice_event(id: &str, kind: &str, stripe_invoice: &str, status: &str) -> Value {
    json!({
        "id": id,
        "object": "event",
        "type": kind,
        "created": now(),
        "data": {"object": {"id": stripe_invoice, "object": "invoice", "status": status}},
    })
}

/// A signed-up tenant whose first invoice is open at Stripe after a declined charge,
/// with its next retry an hour away; our invoice id and Stripe's.
async fn open_invoice(app: &TestApp) -> (saas_core::TenantId, String, String) {
    let tenant = invoiced_with_a_declining_card(app, "starter", Duration::from_secs(2)).await;
    let id = tenant.id;
    wait_for(
        "the first charge to fail",
        Duration::from_secs(30),
        || async move {
            stored_invoices(app, id)
                .await
                .first()
                .is_some_and(|i| i.payment_attempts == 1)
        },
    )
    .await;
    let invoice = stored_invoices(app, tenant.id).await.remove(0);
    assert_eq!(invoice.status, "open");
    (
        tenant.id,
        invoice.id.to_string(),
        invoice.stripe_invoice_id.unwrap(),
    )
}

/// Paid at Stripe behind the service's back, as from Stripe's dashboard.
async fn pay_at_stripe(app: &TestApp, tenant: saas_core::TenantId, stripe_invoice: &str) {
    set_default_card(&stripe_customer(app, tenant).await, "pm_card_visa").await;
    let paid = stripe_post(&format!("/v1/invoices/{stripe_invoice}/pay"), &[]).await;
    assert_eq!(paid["status"], "paid", "{paid}");
}

async fn events_taken(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.owner_pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn forged_expired_and_malformed_webhooks_are_refused_and_change_nothing() {
    let app = spawn().await;
    let (tenant, _, stripe_invoice) = open_invoice(&app).await;
    pay_at_stripe(&app, tenant, &stripe_invoice).await;
    let event = invoice_event("evt_forged", "invoice.paid", &stripe_invoice, "paid");
    let body = serde_json::to_vec(&event).unwrap();

    let cases = [
        (
            Some(billing::webhooks::sign(&body, "whsec_someone_else", now())),
            "invalid_signature",
        ),
        (
            Some(billing::webhooks::sign(&body, SECRET, now() - 301)),
            "signature_expired",
        ),
        (
            Some(billing::webhooks::sign(&body, SECRET, now() + 301)),
            "signature_expired",
        ),
        (Some("t=1,v1=nothex".into()), "invalid_signature"),
        (None, "invalid_signature"),
    ];
    for (signature, code) in cases {
        let response = deliver(&app, &body, signature.clone()).await;
        assert_eq!(response.status(), 400, "{signature:?}");
        assert_eq!(error_code(response).await, code, "{signature:?}");
    }
    // Signed, but the body changed on the way.
    let signature = billing::webhooks::sign(&body, SECRET, now());
    let mut tampered = body.clone();
    tampered.push(b' ');
    let response = deliver(&app, &tampered, Some(signature)).await;
    assert_eq!(error_code(response).await, "invalid_signature");
    // Signed, but not an event.
    let garbage = b"{\"not\": \"an event\"}";
    let response = deliver(
        &app,
        garbage,
        Some(billing::webhooks::sign(garbage, SECRET, now())),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_event");

    assert_eq!(events_taken(&app).await, 0);
    assert_eq!(stored_invoices(&app, tenant).await[0].status, "open");
}

#[tokio::test]
async fn events_in_any_order_and_replayed_end_in_stripes_state_once() {
    let app = spawn().await;
    let (tenant, _, stripe_invoice) = open_invoice(&app).await;
    pay_at_stripe(&app, tenant, &stripe_invoice).await;

    // The older failure arrives after the payment... or before it: either way the
    // invoice ends paid, as Stripe has it, and is never moved back.
    let failed = invoice_event(
        "evt_failed",
        "invoice.payment_failed",
        &stripe_invoice,
        "open",
    );
    let paid = invoice_event(
        "evt_paid",
        "invoice.payment_succeeded",
        &stripe_invoice,
        "paid",
    );
    assert_eq!(deliver_signed(&app, &failed).await["outcome"], "applied");
    assert_eq!(stored_invoices(&app, tenant).await[0].status, "paid");
    assert_eq!(deliver_signed(&app, &paid).await["outcome"], "no_change");
    assert_eq!(deliver_signed(&app, &failed).await["outcome"], "duplicate");
    assert_eq!(deliver_signed(&app, &paid).await["outcome"], "duplicate");
    let late_failure = invoice_event(
        "evt_failed_late",
        "invoice.payment_failed",
        &stripe_invoice,
        "open",
    );
    assert_eq!(
        deliver_signed(&app, &late_failure).await["outcome"],
        "no_change"
    );
    assert_eq!(stored_invoices(&app, tenant).await[0].status, "paid");

    // Objects Stripe does not know change nothing; types we do not act on are ignored.
    let unknown = invoice_event("evt_unknown", "invoice.paid", "in_doesnotexist", "paid");
    assert_eq!(
        deliver_signed(&app, &unknown).await["outcome"],
        "unknown_object"
    );
    let other = json!({"id": "evt_other", "type": "customer.updated",
                       "data": {"object": {"id": "cus_x", "object": "customer"}}});
    assert_eq!(deliver_signed(&app, &other).await["outcome"], "ignored");
    assert_eq!(events_taken(&app).await, 5);
    assert_eq!(
        crate::collection::tenant_record(&app, tenant).await.state,
        saas_core::TenantState::Active
    );
}

/// Has localstripe deliver events of type `events` to `url` (its own config API).
async fn register_webhook(endpoint: &str, url: &str, events: &str) {
    let stack = integration_tests::Stack::from_env();
    let response = reqwest::Client::new()
        .post(format!("{}/_config/webhooks/{endpoint}", stack.stripe_url))
        .form(&[("url", url), ("secret", SECRET), ("events[]", events)])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

#[tokio::test]
async fn events_that_localstripe_signs_and_delivers_are_taken() {
    let app = spawn().await;
    let (tenant, _, stripe_invoice) = open_invoice(&app).await;
    let endpoint = format!("test_{}", uuid::Uuid::new_v4().simple());
    let url = app.url("/webhooks/stripe");
    register_webhook(&endpoint, &url, "invoice.payment_succeeded").await;
    pay_at_stripe(&app, tenant, &stripe_invoice).await;
    wait_for(
        "the delivered event to mark the invoice paid",
        Duration::from_secs(15),
        || {
            let app = &app;
            async move { stored_invoices(app, tenant).await[0].status == "paid" }
        },
    )
    .await;
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM stripe_events WHERE object_id = $1 AND type = 'invoice.payment_succeeded'",
    )
    .bind(&stripe_invoice)
    .fetch_one(&app.owner_pool)
    .await
    .unwrap();
    assert_eq!(outcome, "applied");
    // Registrations live as long as localstripe: point this one at nothing it sends.
    register_webhook(&endpoint, &url, "none.never").await;
    let at_stripe = stripe_get(&format!("/v1/invoices/{stripe_invoice}")).await;
    assert_eq!(at_stripe["status"], "paid");
}

#[tokio::test]
async fn a_payment_made_in_stripe_after_dunning_suspended_the_tenant_brings_it_back() {
    let app = TestApp::spawn_with(|config| {
        short_cycles("2s", "1s")(config);
        config.stripe.webhook_secret = Some(SecretString::from(SECRET));
    })
    .await;
    let (tenant, _, stripe_invoice) = open_invoice(&app).await;
    wait_until_suspended(&app, tenant).await;
    pay_at_stripe(&app, tenant, &stripe_invoice).await;
    let paid = invoice_event("evt_paid_later", "invoice.paid", &stripe_invoice, "paid");
    assert_eq!(deliver_signed(&app, &paid).await["outcome"], "applied");
    assert_eq!(stored_invoices(&app, tenant).await[0].status, "paid");
    assert_eq!(
        crate::collection::tenant_record(&app, tenant).await.state,
        saas_core::TenantState::Active
    );
}
