//! Win-back campaigns, with the schedule shortened to seconds.

use std::time::{Duration, Instant};

use integration_tests::{OPERATOR_TOKEN, TestApp};
use saas_core::TenantId;
use serde_json::{Value, json};

async fn winback_messages(app: &TestApp, tenant: TenantId) -> Vec<(String, String)> {
    let mut tx = app.db.system_tx("test read").await.unwrap();
    sqlx::query_as(
        "SELECT subject, body FROM notifications WHERE tenant_id = $1 AND kind = 'winback' \
         ORDER BY created_at",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .unwrap()
}

async fn campaigns(app: &TestApp) -> Vec<Value> {
    let list = app.operator_get("/v1/admin/winback/campaigns").await;
    list["campaigns"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_campaign_runs_until_the_tenant_pays_and_comes_back() {
    let app = TestApp::spawn_with(|config| {
        config.winback.steps = "1s,2s,6s".parse().unwrap();
        config.winback.offer_from_step = 1;
    })
    .await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    let response = app
        .operator_post(
            &format!("/v1/admin/tenants/{}/transitions", tenant.id),
            &json!({"to": "suspended", "reason": "payment failed", "tenant_may_reactivate": true}),
        )
        .await;
    assert_eq!(response.status(), 202);

    // The first two messages arrive on schedule, the second with the offer.
    let deadline = Instant::now() + Duration::from_secs(15);
    while winback_messages(&app, tenant.id).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "win-back messages did not go out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = winback_messages(&app, tenant.id).await;
    assert!(!messages[0].1.contains("% off"), "{messages:?}");
    assert!(messages[1].1.contains("20% off"), "{messages:?}");
    let running = campaigns(&app).await;
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["status"], "running");
    assert_eq!(running[0]["steps_sent"], 2);
    assert_eq!(running[0]["tenant_id"], tenant.id.as_uuid().to_string());

    // The tenant comes back through the campaign, paying with a new card.
    let response = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/reactivation",
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    assert_eq!(
        app.get_json(&tenant.api_key, "/v1/tenant").await["state"],
        "active"
    );
    let won = campaigns(&app).await;
    assert_eq!(won[0]["status"], "won");
    assert!(won[0]["offer_code"].is_string());

    // The third step's time passes: nothing more is sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(winback_messages(&app, tenant.id).await.len(), 2);
}

#[tokio::test]
async fn only_a_suspended_tenant_reactivates_and_erasure_ends_a_campaign() {
    let app = TestApp::spawn_with(|config| config.winback.steps = "1h,2h".parse().unwrap()).await;
    let tenant = app.create_tenant("pro").await;
    let response = app
        .post_as(&tenant.api_key, "/v1/tenant/reactivation", &json!({}))
        .await;
    assert_eq!(response.status(), 422);

    let suspend = app
        .operator_post(
            &format!("/v1/admin/tenants/{}/transitions", tenant.id),
            &json!({"to": "suspended", "reason": "abuse report"}),
        )
        .await;
    assert_eq!(suspend.status(), 202);
    assert_eq!(campaigns(&app).await[0]["status"], "running");
    // An operator's suspension for abuse is not the tenant's to lift.
    let response = app
        .post_as(&tenant.api_key, "/v1/tenant/reactivation", &json!({}))
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        integration_tests::error_code(response).await,
        "reactivation_not_allowed"
    );
    let erase = app
        .operator_post(
            &format!("/v1/admin/tenants/{}/erasure", tenant.id),
            &json!({"reason": "asked by mail"}),
        )
        .await;
    assert_eq!(erase.status(), 202);
    assert_eq!(campaigns(&app).await[0]["status"], "ended");
    let bad = app
        .get("/v1/admin/winback/campaigns?status=maybe")
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
