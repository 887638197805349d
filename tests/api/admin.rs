use integration_tests::{OPERATOR_TOKEN, TestApp, error_code};
use saas_core::TenantState;
use serde_json::Value;

async fn admin_get(app: &TestApp, path: &str) -> reqwest::Response {
    app.get(path)
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn operators_list_tenants_by_state_in_pages_without_probe_tenants() {
    let app = TestApp::spawn().await;
    let mut active = Vec::new();
    for _ in 0..5 {
        active.push(app.create_tenant("starter").await.id.to_string());
    }
    let suspended = app
        .create_tenant_in_state("pro", TenantState::Suspended, false)
        .await;
    let probe = app
        .create_tenant_in_state("pro", TenantState::Active, true)
        .await;

    let mut seen = Vec::new();
    let mut path = "/v1/admin/tenants?state=active&limit=2".to_owned();
    loop {
        let page: Value = admin_get(&app, &path).await.json().await.unwrap();
        let tenants = page["tenants"].as_array().unwrap();
        assert!(tenants.len() <= 2);
        seen.extend(tenants.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(after) => path = format!("/v1/admin/tenants?state=active&limit=2&after={after}"),
            None => break,
        }
    }
    active.sort();
    assert_eq!(
        seen, active,
        "every active tenant once, in id order, the probe hidden"
    );

    let page: Value = admin_get(&app, "/v1/admin/tenants?state=suspended")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["tenants"][0]["id"], suspended.id.to_string());
    assert_eq!(page["tenants"].as_array().unwrap().len(), 1);

    let response = admin_get(&app, &format!("/v1/admin/tenants/{}", probe.id)).await;
    assert_eq!(
        response.status(),
        404,
        "probe tenants are not shown to operators"
    );

    let detail: Value = admin_get(&app, &format!("/v1/admin/tenants/{}", suspended.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["state"], "suspended");
    assert_eq!(detail["plan"], "pro");
}

#[tokio::test]
async fn bad_admin_queries_get_400_and_unknown_tenants_404() {
    let app = TestApp::spawn().await;
    for (query, code) in [
        ("state=sleeping", "invalid_state"),
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("after=ten_zz", "invalid_cursor"),
    ] {
        let response = admin_get(&app, &format!("/v1/admin/tenants?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(error_code(response).await, code, "{query}");
    }
    let response = admin_get(&app, "/v1/admin/tenants?limit=abc").await;
    assert_eq!(response.status(), 400);
    error_code(response).await;
    for id in ["ten_00000000000000000000000000000000", "nonsense"] {
        let response = admin_get(&app, &format!("/v1/admin/tenants/{id}")).await;
        assert_eq!(response.status(), 404, "{id}");
        assert_eq!(error_code(response).await, "not_found");
    }
}
