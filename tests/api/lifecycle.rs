//! Tenant transitions: one at a time under concurrency, plan changes at Stripe without
//! downtime, scheduled downgrades, suspension and reactivation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{OPERATOR_TOKEN, TestApp, error_code, stripe_get};
use saas_core::TenantId;
use serde_json::{Value, json};

async fn plan_change(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.post("/v1/tenant/plan-changes")
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn operator(app: &TestApp, tenant: TenantId, body: Value) -> reqwest::Response {
    app.operator_post(&format!("/v1/admin/tenants/{tenant}/transitions"), &body)
        .await
}

/// Waits until the transition has left `running`, and returns it.
async fn wait_ended(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let transition = app
            .get_json(key, &format!("/v1/tenant/transitions/{id}"))
            .await;
        if transition["state"] != "running" {
            return transition;
        }
        assert!(Instant::now() < deadline, "transition stuck: {transition}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When each completed plan change of the tenant took effect, and when it completed.
async fn plan_changes_of(
    app: &TestApp,
    tenant: TenantId,
) -> Vec<(
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    chrono::DateTime<chrono::Utc>,
)> {
    let mut tx = app.db.system_tx("test read").await.unwrap();
    sqlx::query_as(
        "SELECT to_plan, effective_at, completed_at FROM tenant_transitions \
         WHERE tenant_id = $1 AND kind = 'plan_change' AND status = 'completed' \
         ORDER BY completed_at",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .unwrap()
}

/// What the tenant's Stripe customer has: subscriptions and invoices.
async fn stripe_objects_of(app: &TestApp, tenant: TenantId) -> (usize, usize) {
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let customer: String =
        sqlx::query_scalar("SELECT stripe_customer_id FROM tenants WHERE id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let subscriptions =
        stripe_get(&format!("/v1/subscriptions?customer={customer}&status=all")).await;
    let invoices = stripe_get(&format!("/v1/invoices?customer={customer}")).await;
    (
        subscriptions["data"].as_array().map_or(0, Vec::len),
        invoices["data"].as_array().map_or(0, Vec::len),
    )
}

#[tokio::test]
async fn fifty_concurrent_plan_changes_one_wins_each_round_and_each_is_recorded_once() {
    let app = TestApp::spawn().await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    const ROUNDS: usize = 100;
    for round in 0..ROUNDS {
        // Up to pro, then straight back down to starter, and so on.
        let plan = if round % 2 == 0 { "pro" } else { "starter" };
        let body = json!({"plan": plan, "effective": "now"});
        let answers = futures_util::future::join_all(
            (0..50).map(|_| plan_change(&app, &tenant.api_key, body.clone())),
        )
        .await;
        let mut accepted = Vec::new();
        let mut conflicts = 0;
        for response in answers {
            match response.status().as_u16() {
                202 => accepted.push(response.json::<Value>().await.unwrap()),
                409 => {
                    assert_eq!(error_code(response).await, "transition_in_progress");
                    conflicts += 1;
                }
                // Arrived after the winner had already finished: nothing left to change.
                422 => {
                    assert_eq!(error_code(response).await, "invalid_transition");
                    conflicts += 1;
                }
                other => panic!("round {round}: unexpected {other}"),
            }
        }
        assert_eq!(accepted.len(), 1, "round {round}");
        assert_eq!(conflicts, 49, "round {round}");
        let id = accepted[0]["transition"]["id"].as_str().unwrap();
        let ended = wait_ended(&app, &tenant.api_key, id).await;
        assert_eq!(ended["state"], "completed", "round {round}: {ended}");
        let me = app.get_json(&tenant.api_key, "/v1/tenant").await;
        assert_eq!(me["plan"], plan, "round {round}");
    }
    // One plan-change job per round, each done; retries are listed with their cause.
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let jobs: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT status, attempts, last_error FROM jobs WHERE kind = 'lifecycle.plan_change'",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(jobs.len(), ROUNDS);
    assert!(
        jobs.iter().all(|(status, _, _)| status == "done"),
        "{jobs:?}"
    );
    let retried: Vec<_> = jobs
        .iter()
        .filter(|(_, attempts, _)| *attempts > 1)
        .collect();
    assert!(retried.len() <= 2, "too many retries: {retried:?}");
    drop(tx);
    let tenant_view = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(tenant_view["state"], "active");
    assert_eq!(tenant_view["plan"], "starter");
    // Billing's record of the plan history: each change once, in effect as it completed.
    let changes = plan_changes_of(&app, tenant.id).await;
    assert_eq!(changes.len(), ROUNDS);
    assert!(
        changes
            .iter()
            .all(|(_, effective, completed)| *effective == Some(*completed)),
        "{changes:?}"
    );
    // Nothing moved at Stripe: no subscription, only the signup invoice.
    assert_eq!(stripe_objects_of(&app, tenant.id).await, (0, 1));
}

#[tokio::test]
async fn traffic_keeps_flowing_through_an_upgrade_and_a_downgrade() {
    let app = TestApp::spawn().await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/usage/events"),
            tenant.api_key.clone(),
        );
        tokio::spawn(async move {
            let mut batch = 0u64;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<Value> = (0..10)
                    .map(
                        |i| json!({"id": format!("b{batch}-{i}"), "metric": "queries", "value": 1}),
                    )
                    .collect();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "events": events }))
                    .send()
                    .await
                    .unwrap();
                if response.status() == 202 {
                    sent.fetch_add(10, Ordering::Relaxed);
                } else {
                    failures.push(response.status().as_u16());
                }
                batch += 1;
            }
            failures
        })
    };
    for body in [
        json!({"plan": "pro"}),
        json!({"plan": "starter", "effective": "now"}),
    ] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = plan_change(&app, &tenant.api_key, body).await;
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.unwrap();
        let id = accepted["transition"]["id"].as_str().unwrap();
        assert_eq!(
            wait_ended(&app, &tenant.api_key, id).await["state"],
            "completed"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = traffic.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let used = summary["metrics"]["queries"]["used"].as_u64().unwrap();
    assert_eq!(used, sent.load(Ordering::Relaxed), "usage lost or doubled");
    assert!(used > 0);
}

#[tokio::test]
async fn a_downgrade_waits_for_the_end_of_the_period() {
    let app = TestApp::spawn_with(|config| config.billing.cycle = "3s".parse().unwrap()).await;
    let tenant = app.sign_up_tenant("pro", Some("pm_card_visa")).await;
    let response = plan_change(&app, &tenant.api_key, json!({"plan": "starter"})).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["transition"]["to"], "downgrading");
    assert_eq!(accepted["transition"]["effective"], "period_end");
    let id = accepted["transition"]["id"].as_str().unwrap();
    let scheduled = wait_ended(&app, &tenant.api_key, id).await;
    assert_eq!(scheduled["state"], "scheduled", "{scheduled}");
    // Until the period ends: active, still on pro.
    let view = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(
        (view["state"].as_str(), view["plan"].as_str()),
        (Some("active"), Some("pro"))
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let transition = app
            .get_json(&tenant.api_key, &format!("/v1/tenant/transitions/{id}"))
            .await;
        if transition["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "never applied: {transition}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(view["plan"], "starter");
    // In effect from the boundary it was scheduled for, however late its job ran.
    let (_, effective, completed) = plan_changes_of(&app, tenant.id).await.remove(0);
    let effective = effective.expect("recorded");
    assert!(effective <= completed, "{effective} after {completed}");
    assert_eq!(
        effective.timestamp_subsec_nanos(),
        0,
        "a period boundary: {effective}"
    );
}

#[tokio::test]
async fn an_upgrade_without_a_card_fails_and_keeps_the_old_plan() {
    let app = TestApp::spawn().await;
    let tenant = app.sign_up_tenant("free", None).await;
    let response = plan_change(&app, &tenant.api_key, json!({"plan": "pro"})).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let ended = wait_ended(
        &app,
        &tenant.api_key,
        accepted["transition"]["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(ended["failure_reason"].is_string());
    let view = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(
        (view["state"].as_str(), view["plan"].as_str()),
        (Some("active"), Some("free"))
    );
}

#[tokio::test]
async fn suspension_stops_metering_and_reactivation_restores_everything() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    let events = json!([{"id": "before", "metric": "tokens", "value": 1234}]);
    assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);

    let response = operator(
        &app,
        tenant.id,
        json!({"to": "suspended", "reason": "unpaid invoice"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["transition"]["state"], "completed");

    let refused = app
        .ingest(
            &tenant.api_key,
            json!([{"id": "during", "metric": "tokens", "value": 1}]),
        )
        .await;
    assert_eq!(refused.status(), 403);
    assert_eq!(error_code(refused).await, "tenant_suspended");
    // Reading its own data still works.
    for path in [
        "/v1/tenant",
        "/v1/usage/summary",
        "/v1/invoices/upcoming",
        "/v1/tenant/transitions",
    ] {
        app.get_json(&tenant.api_key, path).await;
    }
    assert_eq!(
        app.get_json(&tenant.api_key, "/v1/tenant").await["state"],
        "suspended"
    );

    let response = operator(&app, tenant.id, json!({"to": "active", "reason": "paid"})).await;
    assert_eq!(response.status(), 202);
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(
        summary["metrics"]["tokens"]["used"], 1234,
        "every byte intact"
    );
    let after = app
        .ingest(
            &tenant.api_key,
            json!([{"id": "after", "metric": "tokens", "value": 1}]),
        )
        .await;
    assert_eq!(after.status(), 202);

    // Each transition is in the audit log with its actor, states and reason.
    let audit: Value = app
        .get(&format!("/v1/admin/audit?tenant_id={}", tenant.id))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let transitions: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "tenant.transition")
        .map(|e| {
            (
                e["from_state"].as_str(),
                e["to_state"].as_str(),
                e["reason"].as_str(),
                e["actor"].as_str(),
            )
        })
        .collect();
    assert!(
        transitions.contains(&(
            Some("active"),
            Some("suspended"),
            Some("unpaid invoice"),
            Some("operator")
        )),
        "{audit}"
    );
    assert!(
        transitions.contains(&(
            Some("suspended"),
            Some("active"),
            Some("paid"),
            Some("operator")
        )),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["request_id"].is_string() || e["action"] != "tenant.transition")
    );
}

#[tokio::test]
async fn bad_transitions_get_4xx_and_change_nothing() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("starter").await;
    let cases = [
        (json!({"plan": "starter"}), 422, "invalid_transition"),
        (json!({"plan": "platinum"}), 422, "unknown_plan"),
        (
            json!({"plan": "pro", "effective": "tomorrow"}),
            400,
            "invalid_body",
        ),
        (json!({"plan": "pro", "extra": 1}), 400, "invalid_body"),
        (json!({}), 400, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let response = plan_change(&app, &tenant.api_key, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let operator_cases = [
        (
            json!({"to": "active", "reason": "already active"}),
            422,
            "invalid_transition",
        ),
        (
            json!({"to": "provisioning", "reason": "no"}),
            422,
            "invalid_transition",
        ),
        (
            json!({"to": "upgrading", "reason": "no plan"}),
            422,
            "plan_required",
        ),
        (
            json!({"to": "downgrading", "plan": "pro", "reason": "wrong way"}),
            422,
            "invalid_transition",
        ),
        (
            json!({"to": "suspended", "reason": ""}),
            422,
            "invalid_reason",
        ),
        (
            json!({"to": "sleeping", "reason": "x"}),
            400,
            "invalid_body",
        ),
    ];
    for (body, status, code) in operator_cases {
        let response = operator(&app, tenant.id, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let unknown = operator(
        &app,
        TenantId::new(),
        json!({"to": "suspended", "reason": "x"}),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    // A tenant key is not an operator.
    let response = app
        .post_as(
            &tenant.api_key,
            &format!("/v1/admin/tenants/{}/transitions", tenant.id),
            &json!({"to": "suspended", "reason": "x"}),
        )
        .await;
    assert_eq!(response.status(), 403);

    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (transitions, version): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenant_transitions), version FROM tenants WHERE id = $1",
    )
    .bind(tenant.id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((transitions, version), (0, 0), "nothing changed");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("starter").await;
    let send = |body: Value| {
        app.post("/v1/tenant/plan-changes")
            .bearer_auth(&tenant.api_key)
            .header("idempotency-key", "upgrade-1")
            .json(&body)
            .send()
    };
    let first = send(json!({"plan": "pro"})).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The tenant is upgrading now, yet the same request gets the same answer, not 409.
    let again = send(json!({"plan": "pro"})).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = send(json!({"plan": "enterprise"})).await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(error_code(other).await, "idempotency_key_reused");
    // Without the key, the running transition blocks a second one.
    let blocked = plan_change(&app, &tenant.api_key, json!({"plan": "enterprise"})).await;
    assert_eq!(blocked.status(), 409);
}

#[tokio::test]
async fn leaving_for_free_and_coming_back_moves_nothing_at_stripe() {
    let app = TestApp::spawn().await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    for (plan, body) in [
        ("free", json!({"plan": "free", "effective": "now"})),
        ("starter", json!({"plan": "starter"})),
    ] {
        let response = plan_change(&app, &tenant.api_key, body).await;
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.unwrap();
        let id = accepted["transition"]["id"].as_str().unwrap();
        let ended = wait_ended(&app, &tenant.api_key, id).await;
        assert_eq!(ended["state"], "completed", "to {plan}: {ended}");
    }
    // Billing composes the invoices: Stripe holds the signup invoice and nothing else.
    assert_eq!(stripe_objects_of(&app, tenant.id).await, (0, 1));
    let plans: Vec<String> = plan_changes_of(&app, tenant.id)
        .await
        .into_iter()
        .map(|(plan, _, _)| plan)
        .collect();
    assert_eq!(plans, ["free", "starter"]);
}

#[tokio::test]
async fn an_idempotency_key_replays_only_a_request_asking_the_same_effective() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let tenant = app.create_tenant("pro").await;
    let send = |body: Value| {
        app.post("/v1/tenant/plan-changes")
            .bearer_auth(&tenant.api_key)
            .header("idempotency-key", "down-1")
            .json(&body)
            .send()
    };
    let first = send(json!({"plan": "starter", "effective": "now"}))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["transition"]["effective"], "now");
    let again = send(json!({"plan": "starter", "effective": "now"}))
        .await
        .unwrap();
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    // The same plan at the period's end is another request.
    let other = send(json!({"plan": "starter"})).await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(error_code(other).await, "idempotency_key_reused");
}

#[tokio::test]
async fn a_retried_reactivation_gets_its_first_answer() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let suspended = app
        .operator_post(
            &format!("/v1/admin/tenants/{}/transitions", tenant.id),
            &json!({"to": "suspended", "reason": "unpaid", "tenant_may_reactivate": true}),
        )
        .await;
    assert_eq!(suspended.status(), 202);
    let send = || {
        app.post("/v1/tenant/reactivation")
            .bearer_auth(&tenant.api_key)
            .header("idempotency-key", "back-1")
            .json(&json!({}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The answer was lost; the client retries. The tenant is active by now.
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let transitions = app
        .get_json(&tenant.api_key, "/v1/tenant/transitions")
        .await;
    let reactivations = transitions["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "reactivation")
        .count();
    assert_eq!(reactivations, 1);
}

#[tokio::test]
async fn a_tenant_comes_back_right_after_a_suspension_made_behind_the_key_cache() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    // The key's owner, with its state (active), is now in the key cache.
    assert_eq!(
        app.get_json(&tenant.api_key, "/v1/tenant").await["state"],
        "active"
    );
    // Dunning suspends from a job: the cache of this process is not told.
    let suspension = lifecycle::TransitionRequest {
        tenant_id: tenant.id,
        change: lifecycle::Change::Suspend {
            tenant_may_reactivate: true,
        },
        actor: tenancy::audit::Actor::System("dunning"),
        reason: Some("invoice unpaid (exhausted)".into()),
        request_id: None,
        idempotency_key: None,
    };
    lifecycle::transitions::begin(&app.db, &suspension)
        .await
        .unwrap();
    wait_for_state(&app, tenant.id, "suspended").await;
    // Within the cache's time to live, the tenant pays its way back.
    let back = app
        .post_as(&tenant.api_key, "/v1/tenant/reactivation", &json!({}))
        .await;
    assert_eq!(back.status(), 202, "{:?}", back.text().await);
    wait_for_state(&app, tenant.id, "active").await;
}

/// Waits until the operator's view shows the tenant in `state`.
async fn wait_for_state(app: &TestApp, tenant: TenantId, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = app
            .operator_get(&format!("/v1/admin/tenants/{tenant}"))
            .await;
        if seen["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "never {state}: {seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
