//! Self-service onboarding end to end: the real service, Postgres and localstripe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{STRIPE_TEST_KEY, Stack, TestApp, declining_card, error_code};
use jobs::{Worker, WorkerSettings};
use onboarding::OnboardingWorkflow;
use onboarding::workflow::steps;
use payments::PaymentProvider;
use payments::stripe_provider::StripeProvider;
use serde_json::{Value, json};

fn signup_body(plan: &str, payment_method: Option<&str>) -> Value {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let mut body = json!({"email": format!("founder+{unique}@example.com"), "company": format!("Acme {unique}"), "plan": plan});
    if let Some(pm) = payment_method {
        body["payment_method"] = json!(pm);
    }
    body
}

async fn sign_up(app: &TestApp, body: &Value) -> (String, String) {
    let response = app.post("/v1/signups").json(body).send().await.unwrap();
    assert_eq!(response.status(), 202, "{body}");
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["status"], "pending");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["signup_token"].as_str().unwrap().to_owned(),
    )
}

async fn read(app: &TestApp, id: &str, token: &str) -> Value {
    let response = app
        .get(&format!("/v1/signups/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls until the signup is completed or failed.
async fn wait_final(app: &TestApp, id: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = read(app, id, token).await;
        if view["status"] == "completed" || view["status"] == "failed" {
            return view;
        }
        assert!(Instant::now() < deadline, "signup stuck: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Customers at localstripe that carry this signup as their reference.
async fn stripe_customers(email: &str, reference: &str) -> usize {
    let list: Value = reqwest::Client::new()
        .get(format!("{}/v1/customers", Stack::from_env().stripe_url))
        .query(&[("email", email), ("limit", "100")])
        .basic_auth(STRIPE_TEST_KEY, Some(""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["saas_reference"] == reference)
        .count()
}

async fn tenants_named(app: &TestApp, company: &str) -> i64 {
    let mut tx = app.db.system_tx("test").await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM tenants WHERE name = $1")
        .bind(company)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_plan_signs_up_pays_and_is_provisioned_without_a_human() {
    let app = TestApp::spawn().await;
    for (plan, pm) in [
        ("free", None),
        ("starter", Some("pm_card_visa")),
        ("pro", Some("pm_card_visa")),
        ("enterprise", Some("pm_card_visa")),
    ] {
        let body = signup_body(plan, pm);
        let (id, token) = sign_up(&app, &body).await;
        let done = wait_final(&app, &id, &token).await;
        assert_eq!(done["status"], "completed", "{plan}: {done}");
        let names: Vec<&str> = done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        for step in steps::ALL {
            assert!(
                names.contains(&step),
                "{plan}: step {step} missing from {names:?}"
            );
        }
        assert!(done["elapsed_ms"].as_i64().unwrap() >= 0);
        // The first read after completion carries the key; a read soon after (a lost
        // response retried) carries the same.
        let key = match done["api_key"].as_str() {
            Some(key) => key.to_owned(),
            None => panic!("{plan}: the first completed read has no api_key: {done}"),
        };
        assert_eq!(read(&app, &id, &token).await["api_key"], json!(key));
        let tenant = app.get_json(&key, "/v1/tenant").await;
        assert_eq!(tenant["plan"], plan);
        assert_eq!(tenant["state"], "active");
        assert_eq!(tenant["id"], done["tenant_id"]);
        let email = body["email"].as_str().unwrap();
        assert_eq!(
            stripe_customers(email, &id).await,
            1,
            "{plan}: one customer"
        );
        assert_eq!(
            tenants_named(&app, body["company"].as_str().unwrap()).await,
            1
        );
    }
    // Operators see the progress.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"onboarding_steps_total{step="payment_confirmed",status="done"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains("signups_completed_total 4"), "{metrics}");
    assert!(
        metrics.contains("onboarding_completed_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_declined_card_fails_the_signup_and_leaves_nothing_behind() {
    let app = TestApp::spawn().await;
    let card = declining_card().await;
    let body = signup_body("pro", Some(&card));
    let (id, token) = sign_up(&app, &body).await;
    let done = wait_final(&app, &id, &token).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("payment_declined"),
        "{done}"
    );
    assert!(done["tenant_id"].is_null());
    assert!(done.get("api_key").is_none());
    assert_eq!(
        tenants_named(&app, body["company"].as_str().unwrap()).await,
        0
    );
    assert_eq!(
        stripe_customers(body["email"].as_str().unwrap(), &id).await,
        0,
        "the customer is deleted"
    );
    // The signup invoice was charged once, declined, and voided: nothing left to collect.
    let mut tx = app.db.system_tx("test").await.unwrap();
    let invoice: String = sqlx::query_scalar("SELECT stripe_invoice_id FROM signups WHERE id = $1")
        .bind(id.parse::<saas_core::SignupId>().unwrap().as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let at_stripe = integration_tests::stripe_get(&format!("/v1/invoices/{invoice}")).await;
    assert_eq!(at_stripe["status"], "void", "{at_stripe}");
    assert_eq!(at_stripe["auto_advance"], false, "Stripe never retries it");
    assert_eq!(at_stripe["amount_paid"], 0);
}

#[tokio::test]
async fn a_worker_killed_after_any_step_resumes_and_finishes_exactly_once() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let stripe: Arc<dyn PaymentProvider> = Arc::new(
        StripeProvider::new(
            STRIPE_TEST_KEY,
            &Stack::from_env().stripe_url,
            std::time::Duration::from_secs(10),
        )
        .unwrap(),
    );
    let settings = || WorkerSettings {
        lease: Duration::from_millis(300),
        poll_interval: Duration::from_millis(20),
        backoff_base: Duration::ZERO,
        ..WorkerSettings::default()
    };
    for step in steps::ALL {
        let body = signup_body("starter", Some("pm_card_visa"));
        let (id, token) = sign_up(&app, &body).await;

        // A worker that dies right after `step`.
        let mut doomed = OnboardingWorkflow::new(
            app.db.clone(),
            Some(stripe.clone()),
            saas_core::BillingCycle::Months(1),
        );
        doomed.halt_after = Some(step);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(
            Worker::new(&app.db, settings())
                .register(doomed)
                .run(stop_rx),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !read(&app, &id, &token).await["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == step)
        {
            assert!(Instant::now() < deadline, "step {step} never happened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.abort();
        drop(stop_tx);

        // Another worker takes over once the lease has run out.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let healthy = OnboardingWorkflow::new(
            app.db.clone(),
            Some(stripe.clone()),
            saas_core::BillingCycle::Months(1),
        );
        Worker::new(&app.db, settings())
            .register(healthy)
            .run_pending()
            .await
            .unwrap();

        let done = read(&app, &id, &token).await;
        assert_eq!(done["status"], "completed", "killed after {step}: {done}");
        assert_eq!(
            stripe_customers(body["email"].as_str().unwrap(), &id).await,
            1,
            "after {step}"
        );
        assert_eq!(
            tenants_named(&app, body["company"].as_str().unwrap()).await,
            1,
            "after {step}"
        );
        let mut tx = app.db.system_tx("test").await.unwrap();
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE t.name = $1")
            .bind(body["company"].as_str().unwrap())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(keys, 1, "after {step}");
    }
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_answer_and_refuses_another_body() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let body = signup_body("free", None);
    let send = |body: Value, key: Option<&'static str>| {
        let mut request = app.post("/v1/signups").json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let first: Value = send(body.clone(), Some("retry-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again: Value = send(body.clone(), Some("retry-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first, again, "same key, same body: the first answer");
    let response = send(signup_body("free", None), Some("retry-1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(error_code(response).await, "idempotency_key_reused");
    // Without a key, a second submission for the same email and company is refused, and
    // it does not hand out the first signup's token.
    let response = send(body.clone(), None).await.unwrap();
    assert_eq!(response.status(), 409);
    let text = response.text().await.unwrap();
    assert!(text.contains("signup_exists"), "{text}");
    assert!(!text.contains(first["signup_token"].as_str().unwrap()));
    // Another company of the same person is another signup.
    let mut other_company = body.clone();
    other_company["company"] = json!("Another Company");
    let other: Value = send(other_company, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other["id"], first["id"]);
    let count = signups_stored(&app).await;
    assert_eq!(count, 2);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 2, "one onboarding job per signup");
}

#[tokio::test]
async fn concurrent_twins_without_a_key_make_one_signup() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let body = signup_body("free", None);
    let answers = futures_util::future::join_all((0..8).map(|_| {
        let request = app.post("/v1/signups").json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert_eq!(
        answers.iter().filter(|s| **s == 202).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|s| **s == 409).count(),
        7,
        "{answers:?}"
    );
}

#[tokio::test]
async fn bad_signups_get_4xx_and_create_nothing() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let cases = [
        (
            json!({"email": "not-an-email", "company": "Acme", "plan": "free"}),
            422,
            "invalid_email",
        ),
        (
            json!({"email": "a@b.io", "company": "  ", "plan": "free"}),
            422,
            "invalid_company",
        ),
        (
            json!({"email": "a@b.io", "company": "Evil\u{202E}Corp", "plan": "free"}),
            422,
            "invalid_company",
        ),
        (
            json!({"email": "a@b.io", "company": "x".repeat(101), "plan": "free"}),
            422,
            "invalid_company",
        ),
        (
            json!({"email": "a@b.io", "company": "Acme", "plan": "gold"}),
            422,
            "unknown_plan",
        ),
        (
            json!({"email": "a@b.io", "company": "Acme", "plan": "pro"}),
            422,
            "payment_method_required",
        ),
        (
            json!({"email": "a@b.io", "company": "Acme", "plan": "pro", "payment_method": "4242424242424242"}),
            422,
            "invalid_payment_method",
        ),
        (
            json!({"email": "a@b.io", "company": "Acme", "plan": "free", "tenant_id": "ten_1"}),
            400,
            "invalid_body",
        ),
        (
            json!({"email": "a@b.io", "plan": "free"}),
            400,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let response = app.post("/v1/signups").json(&body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let response = app
        .post("/v1/signups")
        .header("idempotency-key", "")
        .json(&signup_body("free", None))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let count = signups_stored(&app).await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn signups_are_rate_limited_per_client_and_read_only_with_their_token() {
    let app = TestApp::spawn_with(|config| {
        config.workers.enabled = false;
        config.signups.rate_per_minute = 3.try_into().unwrap();
    })
    .await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(sign_up(&app, &signup_body("free", None)).await);
    }
    let response = app
        .post("/v1/signups")
        .json(&signup_body("free", None))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "rate_limited");

    let (id, token) = &created[0];
    let (other_id, _) = &created[1];
    let wrong = app
        .get(&format!("/v1/signups/{other_id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404, "another signup's token reads nothing");
    let missing = app.get(&format!("/v1/signups/{id}")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(read(&app, id, token).await["status"], "pending");
}

/// Signups in the store, all of them (they sit under the tenant wall).
async fn signups_stored(app: &TestApp) -> i64 {
    let mut tx = app.db.system_tx("test").await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM signups")
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

/// Every column of a signup's row, as text, to look for a secret in.
async fn stored_signup_row(app: &TestApp, id: &str) -> String {
    let mut tx = app.db.system_tx("test").await.unwrap();
    sqlx::query_scalar("SELECT to_jsonb(s)::text FROM signups s WHERE id = $1")
        .bind(id.parse::<saas_core::SignupId>().unwrap().as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signup_stores_neither_its_token_nor_its_key_and_shows_the_key_for_a_short_window() {
    let app = TestApp::spawn().await;
    let body = signup_body("free", None);
    let response = app
        .post("/v1/signups")
        .header("idempotency-key", "7b0c3c9e-5b1f-4a53-9a51-2f1d1c9e0a11")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["signup_token"].as_str().unwrap(),
    );
    // Wait for completion with HEAD only: it must not start (or use up) the key's window.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = app
            .client
            .head(app.url(&format!("/v1/signups/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        let mut tx = app.db.system_tx("test").await.unwrap();
        let status: String = sqlx::query_scalar("SELECT status FROM signups WHERE id = $1")
            .bind(id.parse::<saas_core::SignupId>().unwrap().as_uuid())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        if status == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "signup stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = stored_signup_row(&app, id).await;
    assert!(
        !row.contains(token),
        "the token is stored in plaintext: {row}"
    );
    assert!(row.contains("\"api_key_secret\": null"), "{row}");

    let first = read(&app, id, token).await;
    let key = first["api_key"]
        .as_str()
        .expect("the first read shows the key")
        .to_owned();
    let row = stored_signup_row(&app, id).await;
    assert!(!row.contains(&key), "the key is stored in plaintext: {row}");
    assert_eq!(
        app.get_json(&key, "/v1/tenant").await["id"],
        first["tenant_id"]
    );
    assert_eq!(read(&app, id, token).await["api_key"], json!(key));

    // Ten minutes later, the window is over: no read shows it, and it is erased.
    let mut tx = app.db.system_tx("test").await.unwrap();
    sqlx::query(
        "UPDATE signups SET first_key_shown_at = now() - interval '11 minutes' WHERE id = $1",
    )
    .bind(id.parse::<saas_core::SignupId>().unwrap().as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(read(&app, id, token).await.get("api_key").is_none());
    assert!(read(&app, id, token).await.get("api_key").is_none());
    assert!(
        stored_signup_row(&app, id)
            .await
            .contains("\"first_key_sealed\": null")
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_token_only_to_the_address_that_sent_it() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let body = signup_body("free", None);
    let from = |address: &str| {
        reqwest::Client::builder()
            .local_address(address.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
            .post(app.url("/v1/signups"))
            .header("idempotency-key", "shared-key-1")
            .json(&body)
            .send()
    };
    let first: Value = from("127.0.0.1").await.unwrap().json().await.unwrap();
    let again: Value = from("127.0.0.1").await.unwrap().json().await.unwrap();
    assert_eq!(first, again, "the same caller gets its first answer");
    // Someone else who learnt the key and the body is another caller.
    let elsewhere = from("127.0.0.2").await.unwrap();
    assert_eq!(elsewhere.status(), 409);
    let text = elsewhere.text().await.unwrap();
    assert!(text.contains("signup_exists"), "{text}");
    assert!(!text.contains(first["signup_token"].as_str().unwrap()));
    assert_eq!(signups_stored(&app).await, 1);
}

#[tokio::test]
async fn signups_sit_under_the_tenant_wall() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let (id, _) = sign_up(&app, &signup_body("free", None)).await;
    let stranger = app.create_tenant("free").await;
    let mut tx = app.db.tenant_tx(stranger.id).await.unwrap();
    let (signups, steps): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM signups), (SELECT count(*) FROM signup_steps)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((signups, steps), (0, 0), "another tenant sees no signup");
    drop(tx);
    let own = saas_core::TenantId::from_uuid(id.parse::<saas_core::SignupId>().unwrap().as_uuid());
    let mut tx = app.db.tenant_tx(own).await.unwrap();
    let signups: i64 = sqlx::query_scalar("SELECT count(*) FROM signups")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(signups, 1, "the tenant it becomes sees it");
}
