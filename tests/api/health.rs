use integration_tests::TestApp;

#[tokio::test]
async fn healthz_answers_ok_with_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app.get("/healthz").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = TestApp::spawn().await;
    app.get("/healthz").send().await.unwrap();
    app.get("/v1/admin/tenants/ten_00000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    let text = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(text.contains(r#"route="/healthz""#), "{text}");
    // Ids never become label values.
    assert!(text.contains(r#"route="/v1/admin/tenants/{id}""#), "{text}");
    assert!(!text.contains("ten_0000"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_committed_copy() {
    let app = TestApp::spawn().await;
    let response = app.get("/openapi.json").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let served: serde_json::Value = response.json().await.unwrap();
    for path in ["/healthz", "/v1/plans", "/v1/api-keys", "/v1/admin/tenants"] {
        assert!(
            served["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(committed_path).expect("docs/openapi.json exists"),
    )
    .unwrap();
    assert!(
        served == committed,
        "docs/openapi.json is stale; regenerate it with `cargo run -q --bin saas -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn plans_list_the_four_public_plans_with_their_terms() {
    let app = TestApp::spawn().await;
    let body: serde_json::Value = app
        .get("/v1/plans")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let codes: Vec<&str> = body["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["free", "starter", "pro", "enterprise"]);
    let free = &body["plans"][0];
    assert_eq!(free["base_fee"], 0);
    assert_eq!(free["metrics"]["queries"]["limit"], 10000);
    let pro = &body["plans"][2];
    assert!(
        pro["metrics"]["queries"]["limit"].is_null(),
        "pro bills overage instead of capping"
    );
    assert!(pro["base_fee"].as_i64().unwrap() > 0);
}
