//! Outbound webhooks: signed by the Standard Webhooks scheme and verified by its official
//! library, written with the change that caused them, retried, turned off when they keep
//! failing, sent again on request, only to addresses the policy allows, and each
//! tenant's to itself alone.

use std::time::Duration;

use integration_tests::{TestApp, TestTenant, WebhookReceiver, error_code};
use serde_json::{Value, json};

/// A service that may deliver to a receiver on this machine, retrying quickly.
async fn spawn(retry_pauses: &str) -> TestApp {
    let pauses = retry_pauses.to_owned();
    TestApp::spawn_with(move |config| {
        config.webhooks.allow_http = true;
        config.webhooks.allow_private_addresses = true;
        config.webhooks.retry_pauses =
            gateway::config::Pauses(saas_core::schedule::parse_pauses(&pauses).unwrap());
        config.workers.job_poll_ms = 50;
    })
    .await
}

/// Registers `receiver` for `events` and hands it the secret; the endpoint's JSON.
async fn register(
    app: &TestApp,
    tenant: &TestTenant,
    receiver: &WebhookReceiver,
    events: Value,
) -> Value {
    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/webhook-endpoints",
            &json!({"url": receiver.url(), "events": events, "description": "books"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let endpoint: Value = response.json().await.unwrap();
    receiver
        .use_secret(endpoint["secret"].as_str().unwrap())
        .await;
    endpoint
}

fn types(received: &[Value]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r["status"] == 204)
        .map(|r| r["payload"]["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn events_arrive_signed_and_verified_by_the_standard_webhooks_library() {
    let app = spawn("100ms").await;
    let tenant = app.create_tenant("free").await; // queries: hard limit 10,000
    let receiver = WebhookReceiver::start().await;
    let endpoint = register(&app, &tenant, &receiver, json!(["*"])).await;
    assert!(endpoint["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(endpoint["events"], json!(["*"]));

    // api_key.created and api_key.revoked.
    let created: Value = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({"name": "ci"}))
        .await
        .json()
        .await
        .unwrap();
    let revoked = app
        .delete(&format!("/v1/api-keys/{}", created["id"].as_str().unwrap()))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    // usage.threshold_reached at 80% and at 100%, once each.
    for (id, value) in [("a", 8_000), ("b", 1_000), ("c", 1_000)] {
        let events = json!([{"id": id, "metric": "queries", "value": value}]);
        assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
    }
    // tenant.suspended and tenant.reactivated.
    for to in ["suspended", "active"] {
        let path = format!("/v1/admin/tenants/{}/transitions", tenant.id);
        let response = app
            .operator_post(&path, &json!({"to": to, "reason": "test"}))
            .await;
        assert!(
            response.status().is_success(),
            "{to}: {}",
            response.status()
        );
    }

    let expected = [
        "api_key.created",
        "api_key.revoked",
        "usage.threshold_reached",
        "usage.threshold_reached",
        "tenant.suspended",
        "tenant.reactivated",
    ];
    let received = receiver
        .wait_until("six events", |r| types(r).len() >= expected.len())
        .await;
    let mut got = types(&received);
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    for delivery in received.iter().filter(|r| r["status"] == 204) {
        assert!(delivery["verified"].as_bool().unwrap(), "{delivery:#}");
        let payload = &delivery["payload"];
        // The documented shape.
        assert_eq!(delivery["headers"]["webhook-id"], payload["id"]);
        assert!(payload["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(payload["tenant_id"], tenant.id.to_string());
        assert_eq!(payload["version"], 1);
        assert!(payload["timestamp"].is_string());
        assert!(payload["data"].is_object());
    }
    let by_type = |t: &str| -> Vec<Value> {
        received
            .iter()
            .filter(|r| r["payload"]["type"] == t)
            .map(|r| r["payload"]["data"].clone())
            .collect()
    };
    assert_eq!(by_type("api_key.created")[0]["api_key_id"], created["id"]);
    assert_eq!(by_type("api_key.created")[0]["name"], "ci");
    let mut thresholds: Vec<u64> = by_type("usage.threshold_reached")
        .iter()
        .map(|d| d["threshold_percent"].as_u64().unwrap())
        .collect();
    thresholds.sort();
    assert_eq!(thresholds, [80, 100]);
    assert_eq!(by_type("usage.threshold_reached")[0]["metric"], "queries");
    assert_eq!(by_type("usage.threshold_reached")[0]["quota"], 10_000);
    assert_eq!(by_type("tenant.suspended")[0]["to_state"], "suspended");
    assert_eq!(by_type("tenant.reactivated")[0]["from_state"], "suspended");

    // The library refuses a tampered body, a stale timestamp, another secret.
    let original = received.iter().find(|r| r["status"] == 204).unwrap();
    let (headers, body) = (&original["headers"], original["body"].as_str().unwrap());
    assert_eq!(
        receiver.post_raw(headers, body).await,
        204,
        "the genuine copy passes"
    );
    let tampered = body.replacen("\"version\":1", "\"version\":2", 1);
    assert_ne!(tampered, body);
    assert_eq!(receiver.post_raw(headers, &tampered).await, 400);
    let mut stale = headers.clone();
    stale["webhook-timestamp"] = json!((chrono::Utc::now().timestamp() - 600).to_string());
    assert_eq!(receiver.post_raw(&stale, body).await, 400);
    receiver.use_secret(&webhooks::signing::new_secret()).await;
    assert_eq!(receiver.post_raw(headers, body).await, 400);
}

#[tokio::test]
async fn only_subscribed_types_are_sent_and_a_rotated_secret_overlaps() {
    let app = spawn("100ms").await;
    let tenant = app.create_tenant("free").await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = register(&app, &tenant, &receiver, json!(["api_key.revoked"])).await;
    let id = endpoint["id"].as_str().unwrap();

    let key: Value = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({"name": "one"}))
        .await
        .json()
        .await
        .unwrap();
    // Rotated: the old secret still verifies (both sign) until the overlap ends.
    let rotated: Value = app
        .post_as(
            &tenant.api_key,
            &format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            &json!({"overlap_secs": 3600}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(rotated["secret"], endpoint["secret"]);
    assert!(rotated["previous_secret_expires_at"].is_string());
    app.delete(&format!("/v1/api-keys/{}", key["id"].as_str().unwrap()))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    let received = receiver
        .wait_until("the revocation", |r| !types(r).is_empty())
        .await;
    assert_eq!(
        types(&received),
        ["api_key.revoked"],
        "api_key.created is not subscribed"
    );
    let delivery = &received[0];
    let signatures = delivery["headers"]["webhook-signature"].as_str().unwrap();
    assert_eq!(
        signatures.split(' ').count(),
        2,
        "both secrets sign during the overlap"
    );
    receiver
        .use_secret(rotated["secret"].as_str().unwrap())
        .await;
    let body = delivery["body"].as_str().unwrap();
    assert_eq!(
        receiver.post_raw(&delivery["headers"], body).await,
        204,
        "the new secret verifies too"
    );
}

#[tokio::test]
async fn a_rolled_back_change_sends_nothing_and_a_committed_one_survives_its_process() {
    let receiver = WebhookReceiver::start().await;
    // No job worker in the first process: it "dies" right after the commit.
    let first = TestApp::spawn_with(|config| {
        config.webhooks.allow_http = true;
        config.webhooks.allow_private_addresses = true;
        config.roles.jobs = false;
    })
    .await;
    let tenant = first.create_tenant("free").await;
    register(&first, &tenant, &receiver, json!(["*"])).await;

    // Rolled back: no event, no delivery, no job.
    let mut tx = first.db.tenant_tx(tenant.id).await.unwrap();
    let data = webhooks::EventData::ApiKeyRevoked(webhooks::events::ApiKeyChanged {
        api_key_id: saas_core::ApiKeyId::new(),
        name: "never".into(),
        prefix: "sk_x".into(),
    });
    webhooks::emit(&mut tx, tenant.id, data).await.unwrap();
    tx.rollback().await.unwrap();
    let counts = |app: &TestApp| {
        let db = app.db.clone();
        async move {
            let mut tx = db.system_tx("test").await.unwrap();
            let row: (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM webhook_events), \
                        (SELECT count(*) FROM webhook_deliveries), \
                        (SELECT count(*) FROM jobs WHERE kind = 'webhooks.deliver')",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            row
        }
    };
    assert_eq!(counts(&first).await, (0, 0, 0));

    // Committed, then the process goes before any delivery.
    let response = first
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({"name": "kept"}))
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(counts(&first).await, (1, 1, 1));
    let second = first
        .spawn_replica(|config| {
            config.roles.jobs = true;
            config.workers.job_poll_ms = 50;
        })
        .await;
    drop(first);
    let received = receiver
        .wait_until("the kept event", |r| !types(r).is_empty())
        .await;
    assert_eq!(types(&received), ["api_key.created"]);
    drop(second);
}

async fn deliveries(app: &TestApp, tenant: &TestTenant, endpoint: &str) -> Vec<Value> {
    app.get_json(
        &tenant.api_key,
        &format!("/v1/webhook-endpoints/{endpoint}/deliveries"),
    )
    .await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

async fn create_key(app: &TestApp, tenant: &TestTenant) {
    let response = app
        .post_as(&tenant.api_key, "/v1/api-keys", &json!({"name": "k"}))
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_receiver_failing_five_times_gets_the_event_once_it_recovers() {
    let app = spawn("100ms,100ms,200ms,200ms,300ms,300ms").await;
    let tenant = app.create_tenant("free").await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = register(&app, &tenant, &receiver, json!(["api_key.created"])).await;
    receiver.control(json!({"fail_next": 5})).await;
    create_key(&app, &tenant).await;

    let received = receiver
        .wait_until("an acknowledgement", |r| !types(r).is_empty())
        .await;
    assert_eq!(
        received.len(),
        6,
        "five failures, then the one acknowledged"
    );
    let ids: std::collections::HashSet<&Value> = received
        .iter()
        .map(|r| &r["headers"]["webhook-id"])
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the event's id");
    let log = deliveries(&app, &tenant, endpoint["id"].as_str().unwrap()).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "succeeded");
    assert_eq!(log[0]["attempts"], 6);
    assert_eq!(log[0]["last_status"], 204);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().await.len(),
        6,
        "nothing more after the acknowledgement"
    );
}

#[tokio::test]
async fn an_endpoint_that_always_fails_is_turned_off_and_redelivery_works() {
    let app = spawn("50ms,50ms").await;
    let tenant = app.create_tenant("free").await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = register(&app, &tenant, &receiver, json!(["api_key.created"])).await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    receiver.control(json!({"always_fail": true})).await;
    create_key(&app, &tenant).await;

    // Three attempts (the first and two retries), then the endpoint is off.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let endpoint = loop {
        let endpoint = app
            .get_json(&tenant.api_key, &format!("/v1/webhook-endpoints/{id}"))
            .await;
        if endpoint["enabled"] == false {
            break endpoint;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never turned off: {endpoint:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("every delivery failed")
    );
    assert_eq!(receiver.received().await.len(), 3);
    let log = deliveries(&app, &tenant, &id).await;
    assert_eq!(
        (log[0]["status"].as_str(), log[0]["attempts"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(log[0]["last_status"], 500);
    // The tenant is told by mail.
    let mut tx = app.db.system_tx("test").await.unwrap();
    let mails: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE kind = 'webhook_endpoint_disabled' AND tenant_id = $1",
    )
    .bind(tenant.id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    drop(tx);
    assert_eq!(mails, 1);

    // Mended, turned on, and the missed event sent again with the same id.
    receiver.control(json!({"always_fail": false})).await;
    let patch = app
        .client
        .patch(app.url(&format!("/v1/webhook-endpoints/{id}")))
        .bearer_auth(&tenant.api_key)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let patched: Value = patch.json().await.unwrap();
    assert_eq!(patched["disabled_reason"], Value::Null);
    let event = log[0]["event_id"].as_str().unwrap();
    let response = app
        .post_as(
            &tenant.api_key,
            &format!("/v1/webhook-endpoints/{id}/events/{event}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let received = receiver
        .wait_until("the redelivery", |r| !types(r).is_empty())
        .await;
    assert_eq!(received.last().unwrap()["headers"]["webhook-id"], event);
    let log = deliveries(&app, &tenant, &id).await;
    assert_eq!(log[0]["status"], "succeeded");
}

#[tokio::test]
async fn endpoints_on_non_public_addresses_are_refused_at_creation() {
    // The production policy, with a name the test resolves to loopback.
    let app = TestApp::spawn_with(|config| {
        config.webhooks.resolve = gateway::config::UrlList(vec![
            "loopback.test=127.0.0.1".into(),
            "inward.test=10.1.2.3".into(),
            "public.test=93.184.216.34".into(),
        ]);
    })
    .await;
    let tenant = app.create_tenant("free").await;
    for (url, code) in [
        ("https://127.0.0.1/hook", "webhook_url_forbidden"),
        ("https://10.0.0.8/hook", "webhook_url_forbidden"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "webhook_url_forbidden",
        ),
        ("https://[::1]/hook", "webhook_url_forbidden"),
        ("https://loopback.test/hook", "webhook_url_forbidden"),
        ("https://inward.test/hook", "webhook_url_forbidden"),
        ("http://public.test/hook", "invalid_webhook_url"),
        ("https://user:pw@public.test/hook", "invalid_webhook_url"),
    ] {
        let response = app
            .post_as(
                &tenant.api_key,
                "/v1/webhook-endpoints",
                &json!({"url": url, "events": ["*"]}),
            )
            .await;
        assert_eq!(response.status(), 422, "{url}");
        assert_eq!(error_code(response).await, code, "{url}");
    }
    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/webhook-endpoints",
            &json!({"url": "https://public.test/hook", "events": ["invoice.paid"]}),
        )
        .await;
    assert_eq!(
        response.status(),
        201,
        "a public address is accepted (nothing is sent yet)"
    );
    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/webhook-endpoints",
            &json!({"url": "https://public.test/hook", "events": ["invoice.deleted"]}),
        )
        .await;
    assert_eq!(error_code(response).await, "unknown_event_type");
}

#[tokio::test]
async fn a_tenant_sees_and_manages_only_its_own_endpoints_and_deliveries() {
    let app = spawn("100ms").await;
    let (alice, bob) = (
        app.create_tenant("free").await,
        app.create_tenant("free").await,
    );
    let receiver = WebhookReceiver::start().await;
    let endpoint = register(&app, &alice, &receiver, json!(["api_key.created"])).await;
    let id = endpoint["id"].as_str().unwrap();
    create_key(&app, &alice).await;
    let received = receiver
        .wait_until("alice's event", |r| !types(r).is_empty())
        .await;
    let event = received[0]["headers"]["webhook-id"]
        .as_str()
        .unwrap()
        .to_owned();

    let listed = app.get_json(&bob.api_key, "/v1/webhook-endpoints").await;
    assert_eq!(listed["webhook_endpoints"], json!([]));
    for path in [
        format!("/v1/webhook-endpoints/{id}"),
        format!("/v1/webhook-endpoints/{id}/deliveries"),
    ] {
        let response = app
            .get(&path)
            .bearer_auth(&bob.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let patch = app
        .client
        .patch(app.url(&format!("/v1/webhook-endpoints/{id}")))
        .bearer_auth(&bob.api_key)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 404);
    let delete = app
        .delete(&format!("/v1/webhook-endpoints/{id}"))
        .bearer_auth(&bob.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404);
    // Bob's own endpoint cannot be handed Alice's event either.
    let bobs = register(&app, &bob, &receiver, json!(["*"])).await;
    let response = app
        .post_as(
            &bob.api_key,
            &format!(
                "/v1/webhook-endpoints/{}/events/{event}/redeliver",
                bobs["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 404);
    // Alice's endpoint is untouched.
    let endpoint = app
        .get_json(&alice.api_key, &format!("/v1/webhook-endpoints/{id}"))
        .await;
    assert_eq!(endpoint["enabled"], true);
}

#[tokio::test]
async fn billing_events_follow_an_invoice_through_a_failed_payment_to_suspension() {
    let app = TestApp::spawn_with(|config| {
        crate::collection::short_cycles("3s", "1s,2s")(config);
        config.webhooks.allow_http = true;
        config.webhooks.allow_private_addresses = true;
        config.workers.job_poll_ms = 50;
    })
    .await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    let tenant = TestTenant {
        id: tenant.id,
        key_id: saas_core::ApiKeyId::new(),
        api_key: tenant.api_key,
    };
    let receiver = WebhookReceiver::start().await;
    register(&app, &tenant, &receiver, json!(["*"])).await;
    let customer = crate::collection::stripe_customer(&app, tenant.id).await;
    crate::collection::set_default_card(&customer, &integration_tests::declining_card().await)
        .await;
    let usage = json!([{"id": "u1", "metric": "tokens", "value": 3_000_000}]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    app.drain_relay().await;
    crate::collection::billing_run(&app).await;

    let received = receiver
        .wait_until("the suspension", |r| {
            types(r).iter().any(|t| t == "tenant.suspended")
        })
        .await;
    let payloads: Vec<&Value> = received
        .iter()
        .filter(|r| r["status"] == 204)
        .map(|r| &r["payload"])
        .collect();
    let of = |t: &str| -> Vec<&Value> {
        payloads
            .iter()
            .copied()
            .filter(|p| p["type"] == t)
            .collect()
    };
    let created = of("invoice.created");
    let invoice = created
        .iter()
        .find(|p| p["data"]["total"].as_i64().unwrap() > 0)
        .expect("the invoice of the period");
    let invoice_id = invoice["data"]["invoice_id"].as_str().unwrap();
    let stored = crate::collection::stored_invoices(&app, tenant.id).await;
    let ours = stored
        .iter()
        .find(|i| i.id.to_string() == invoice_id)
        .unwrap();
    assert_eq!(invoice["data"]["total"].as_i64().unwrap(), ours.total);
    let failures = of("invoice.payment_failed");
    let failures: Vec<&&Value> = failures
        .iter()
        .filter(|p| p["data"]["invoice_id"] == invoice_id)
        .collect();
    assert_eq!(failures.len(), 3, "the first charge and two retries");
    assert_eq!(failures[0]["data"]["amount_due"], invoice["data"]["total"]);
    assert!(failures[0]["data"]["next_retry_at"].is_string());
    assert!(
        failures
            .iter()
            .any(|p| p["data"]["next_retry_at"].is_null()),
        "the last has no retry"
    );
    let retries = of("dunning.retry_scheduled");
    let mut numbers: Vec<u64> = retries
        .iter()
        .map(|p| p["data"]["retry"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(of("tenant.suspended").len(), 1);
}

#[tokio::test]
async fn an_erased_tenants_endpoints_hear_of_it_and_then_are_gone() {
    let app = spawn("100ms").await;
    let tenant = app.create_tenant("free").await;
    let receiver = WebhookReceiver::start().await;
    let listening = register(
        &app,
        &tenant,
        &receiver,
        json!(["tenant.erasure_completed"]),
    )
    .await;
    let other = register(&app, &tenant, &receiver, json!(["api_key.created"])).await;
    receiver
        .use_secret(listening["secret"].as_str().unwrap())
        .await;
    let response = app
        .post("/v1/tenant/erasure")
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let received = receiver
        .wait_until("the erasure event", |r| !types(r).is_empty())
        .await;
    assert_eq!(types(&received), ["tenant.erasure_completed"]);
    assert!(received[0]["payload"]["data"]["erased_at"].is_string());
    // Then nothing of the tenant's webhooks is left.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut tx = app.db.system_tx("test").await.unwrap();
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1) \
                  + (SELECT count(*) FROM webhook_events WHERE tenant_id = $1)",
        )
        .bind(tenant.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} webhook rows left; other endpoint {}",
            other["id"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mail_goes_with_the_moments_a_tenant_chose() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("free").await;
    let settings = app
        .get_json(&tenant.api_key, "/v1/tenant/notifications")
        .await;
    assert_eq!(settings["email"]["quota_alert"], true);
    let patch = |body: Value| {
        app.client
            .patch(app.url("/v1/tenant/notifications"))
            .bearer_auth(&tenant.api_key)
            .json(&body)
            .send()
    };
    let refused = patch(json!({"email": {"welcome": false}})).await.unwrap();
    assert_eq!(error_code(refused).await, "unknown_notification");
    let changed: Value = patch(json!({"email": {"quota_alert": false}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["email"]["quota_alert"], false);
    assert_eq!(changed["email"]["suspension"], true);

    let usage = json!([{"id": "a", "metric": "queries", "value": 9_000}]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    let path = format!("/v1/admin/tenants/{}/transitions", tenant.id);
    let response = app
        .operator_post(&path, &json!({"to": "suspended", "reason": "test"}))
        .await;
    assert!(response.status().is_success());

    let mut tx = app.db.system_tx("test").await.unwrap();
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM notifications WHERE tenant_id = $1 ORDER BY created_at",
    )
    .bind(tenant.id.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(kinds, ["suspension"], "the quota alert was turned off");
}
