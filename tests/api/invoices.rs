use integration_tests::TestApp;
use serde_json::{Value, json};

#[tokio::test]
async fn the_upcoming_invoice_rates_exactly_the_usage_so_far() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    let batch = json!([
        {"id": "q", "metric": "queries", "value": 12_345_678},
        {"id": "t", "metric": "tokens", "value": 19_999_999},
        {"id": "b", "metric": "bytes", "value": 107_374_182_400u64 + 1_610_612_736},
    ]);
    assert_eq!(app.ingest(&tenant.api_key, batch).await.status(), 202);
    let invoice = app.get_json(&tenant.api_key, "/v1/invoices/upcoming").await;

    // Pro: base 19,900. Queries past 1,000,000: 9,000,000 at 40 per 1,000 = 360,000, then
    // 2,345,678 at 25 per 1,000 = 58,641.95 -> 58,642. Tokens stay within the included
    // 20,000,000. Bytes: 1.5 GiB past 100 GiB at 20 per GiB = 30.
    assert_eq!(invoice["total"], 19_900 + 360_000 + 58_642 + 30);
    assert_eq!(invoice["currency"], "usd");
    let lines = invoice["lines"].as_array().unwrap();
    let sum: i64 = lines.iter().map(|l| l["amount"].as_i64().unwrap()).sum();
    assert_eq!(invoice["total"], sum);
    for (metric, used) in [
        ("queries", 12_345_678u64),
        ("tokens", 19_999_999),
        ("bytes", 108_984_795_136),
    ] {
        let billed: u64 = lines
            .iter()
            .filter(|l| l["metric"] == metric)
            .map(|l| l["quantity"].as_u64().unwrap())
            .sum();
        assert_eq!(
            billed, used,
            "{metric}: line quantities must add up to the usage"
        );
    }
    let summary: Value = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    assert_eq!(summary["metrics"]["queries"]["used"], 12_345_678);
}

#[tokio::test]
async fn a_new_tenant_owes_only_its_base_fee() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let invoice = app.get_json(&tenant.api_key, "/v1/invoices/upcoming").await;
    assert_eq!(invoice["total"], 2_900);
    assert_eq!(invoice["plan"], "starter");
}
