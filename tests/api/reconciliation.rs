//! Reconciliation pages through any number of invoices, and finds a difference between
//! what an invoice bills and the usage behind it wherever it is.

use std::collections::BTreeSet;
use std::time::Duration;

use billing::invoices::Collection::Stripe as STRIPE;
use integration_tests::{OPERATOR_TOKEN, TestApp, error_code};
use saas_core::{BillingCycle, TenantState};
use serde_json::{Value, json};

/// Every page of the reconciliation, `limit` invoices at a time.
async fn pages(app: &TestApp, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/admin/billing/reconciliation?limit={limit}");
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let page = app.operator_get(&path).await;
        after = page["next_after"].as_str().map(str::to_owned);
        pages.push(page);
        if after.is_none() {
            return pages;
        }
    }
}

#[tokio::test]
async fn pages_cover_every_invoice_once_and_a_tampered_line_is_found() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let mut tenants = Vec::new();
    for (i, plan) in ["starter", "pro", "enterprise", "pro", "starter"]
        .iter()
        .enumerate()
    {
        let tenant = app
            .create_tenant_on_cycle(plan, TenantState::Active, false, BillingCycle::Seconds(2))
            .await;
        let events = json!([{"id": format!("e{i}"), "metric": "tokens", "value": 1000 + i}]);
        assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
        tenants.push(tenant);
    }
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    app.drain_relay().await;
    let report = billing::invoices::run(
        &app.db,
        &app.clickhouse,
        chrono::Utc::now(),
        Duration::ZERO,
        STRIPE,
    )
    .await
    .unwrap();
    assert!(report.invoices_created >= 5, "{report:?}");

    let all = pages(&app, 1000).await;
    assert_eq!(all.len(), 1);
    let total = all[0]["invoices_checked"].as_u64().unwrap();
    assert!(total >= 5);
    assert_eq!(all[0]["mismatches"], json!([]), "{}", all[0]);
    let small = pages(&app, 2).await;
    let checked: u64 = small
        .iter()
        .map(|p| p["invoices_checked"].as_u64().unwrap())
        .sum();
    assert_eq!(checked, total, "the pages cover every invoice once");
    assert!(small.len() >= 3);

    // One line billed one unit more than was used: found, whichever page it is on.
    let mut tx = app.owner_pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.system', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let tampered: (uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "UPDATE invoice_lines SET quantity = quantity + 1 \
         WHERE (invoice_id, position) = ( \
             SELECT l.invoice_id, l.position FROM invoice_lines l \
             JOIN invoices i ON i.id = l.invoice_id \
             WHERE i.tenant_id = $1 AND l.metric = 'tokens' AND l.quantity > 0 LIMIT 1) \
         RETURNING invoice_id, tenant_id",
    )
    .bind(tenants[3].id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let found: Vec<Value> = pages(&app, 2)
        .await
        .iter()
        .flat_map(|p| p["mismatches"].as_array().unwrap().clone())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["invoice_id"], json!(tampered.0.to_string()));
    assert_eq!(found[0]["tenant_id"], json!(tampered.1.to_string()));
    assert_eq!(found[0]["metric"], "tokens");
    assert_eq!(found[0]["billed"], json!(1003 + 1));
    assert_eq!(found[0]["usage"], json!(1003));
    let invoices: BTreeSet<String> = found
        .iter()
        .map(|m| m["invoice_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(invoices.len(), 1);
}

#[tokio::test]
async fn bad_paging_is_refused() {
    let app = TestApp::spawn().await;
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("after=not-an-id", "invalid_after"),
    ] {
        let response = app
            .get(&format!("/v1/admin/billing/reconciliation?{query}"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(error_code(response).await, code, "{query}");
    }
}
