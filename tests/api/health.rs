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

/// The metric names an alert rule's expression reads: identifiers that are not
/// functions, keywords, label matchers, ranges or numbers.
fn metrics_read_by(expr: &str) -> Vec<String> {
    let mut bare = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    let keywords = [
        "by", "without", "and", "or", "unless", "on", "ignoring", "bool",
    ];
    let mut names = Vec::new();
    let mut rest = bare.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let (word, after) = tail.split_at(end);
        let number = rest[..start].ends_with(|c: char| c.is_ascii_digit() || c == '.');
        if !after.trim_start().starts_with('(') && !keywords.contains(&word) && !number {
            names.push(word.to_owned());
        }
        rest = after;
    }
    names
}

#[tokio::test]
async fn every_metric_the_alert_rules_read_is_exported_from_start_up() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    // Expressions are written on one line, or folded (`>-`) over the lines below.
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = expr.trim().to_owned();
        if expr == ">-" {
            expr.clear();
            while let Some(next) = lines.next_if(|l| l.starts_with("          ")) {
                expr.push_str(next.trim());
                expr.push(' ');
            }
        }
        exprs.push(expr);
    }
    assert!(exprs.len() >= 5, "{exprs:?}");
    let mut names: Vec<String> = exprs.iter().flat_map(|e| metrics_read_by(e)).collect();
    assert!(
        names.contains(&"usage_relay_lag_seconds".to_owned()),
        "{names:?}"
    );
    // And the ledger's size, which the README tells operators to watch.
    names.extend([
        "usage_ledger_rows".to_owned(),
        "usage_ledger_bytes".to_owned(),
    ]);

    let app = TestApp::spawn().await;
    app.get("/healthz").send().await.unwrap();
    let exported = |page: &str, name: &str| {
        page.lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
    };
    app.metrics_until(&format!("every metric of {names:?}"), |page| {
        names.iter().all(|name| exported(page, name))
    })
    .await;
}

#[test]
fn an_alert_expression_names_its_metrics_and_nothing_else() {
    assert_eq!(
        metrics_read_by(
            r#"sum(rate(http_requests_total{status=~"5.."}[5m])) / clamp_min(sum(rate(http_requests_total[5m])), 1e-9) > 0.01"#
        ),
        ["http_requests_total", "http_requests_total"]
    );
    assert_eq!(
        metrics_read_by("max(usage_relay_lag_seconds) > 300"),
        ["usage_relay_lag_seconds"]
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = TestApp::spawn().await;
    app.get("/healthz").send().await.unwrap();
    app.get("/v1/admin/tenants/ten_00000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    let text = app.metrics().await;
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
