//! Invoice runs through whole (short) billing cycles: every invoice bills exactly the
//! period's usage, once, whatever happens to the runs.

use std::collections::BTreeMap;
use std::time::Duration;

use billing::invoices::Collection::Stripe as STRIPE;
use integration_tests::{TestApp, TestTenant};
use saas_core::{BillingCycle, TenantState};
use serde_json::{Value, json};

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn app_config(config: &mut gateway::Config) {
    config.billing.close_grace_ms = 300;
    // The tests run the invoice runs themselves.
    config.billing.run_interval_ms = 3_600_000;
    config.workers.relay_idle_ms = 20;
}

async fn run(app: &TestApp) -> Value {
    let response = app
        .operator_post("/v1/admin/billing/runs", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The period's usage per metric as the quota counters hold it.
async fn counters(app: &TestApp, tenant: &TestTenant, period_start: &str) -> BTreeMap<String, u64> {
    let start: chrono::DateTime<chrono::Utc> = period_start.parse().unwrap();
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT metric, used::text FROM usage_counters WHERE tenant_id = $1 AND period_start = $2",
    )
    .bind(tenant.id.as_uuid())
    .bind(start)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(m, u)| (m, u.parse().unwrap()))
        .collect()
}

/// The queries of per-minute usage that finished since `since`, as ClickHouse's
/// `system.query_log` holds them.
async fn usage_queries_since(app: &TestApp, since: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let client = app.clickhouse.client();
    client.query("SYSTEM FLUSH LOGS").execute().await.unwrap();
    client
        .query(
            "SELECT query FROM system.query_log \
             WHERE type = 2 AND event_time >= toDateTime(?) \
               AND query LIKE '%FROM usage_minutes%'",
        )
        .bind(u32::try_from(since.timestamp() - 1).unwrap())
        .fetch_all()
        .await
        .unwrap()
}

/// How many of those queries name one of `tenants`.
async fn usage_reads_naming(
    app: &TestApp,
    tenants: &[TestTenant],
    since: chrono::DateTime<chrono::Utc>,
) -> usize {
    let queries = usage_queries_since(app, since).await;
    queries
        .iter()
        .filter(|query| {
            tenants
                .iter()
                .any(|t| query.contains(&t.id.as_uuid().to_string()))
        })
        .count()
}

#[tokio::test]
async fn a_full_cycle_of_120_tenants_bills_exactly_their_usage() {
    let app = TestApp::spawn_with(app_config).await;
    let plans = ["starter", "pro", "enterprise"];
    let mut tenants = Vec::new();
    for i in 0..120 {
        tenants.push(
            app.create_tenant_on_cycle(
                plans[i % 3],
                TenantState::Active,
                false,
                BillingCycle::Seconds(6),
            )
            .await,
        );
    }
    let mut rng = Lcg(42);
    let mut batches = Vec::new();
    for tenant in &tenants {
        for batch in 0..=rng.next(3) {
            let events: Vec<Value> = (0..1 + rng.next(20))
                .map(|i| {
                    let metric = ["queries", "tokens", "bytes"][rng.next(3) as usize];
                    let value = match metric {
                        "queries" => rng.next(200_000),
                        "tokens" => rng.next(5_000_000),
                        // Small enough that starter's hard cap on bytes (20 GiB) is never
                        // reached: every batch must be accepted.
                        _ => rng.next(1 << 26),
                    };
                    json!({"id": format!("e{batch}-{i}"), "metric": metric, "value": value})
                })
                .collect();
            batches.push((tenant.api_key.clone(), Value::Array(events)));
        }
    }
    for chunk in batches.chunks(16) {
        let sent = futures_util::future::join_all(
            chunk
                .iter()
                .map(|(key, events)| app.ingest(key, events.clone())),
        )
        .await;
        let statuses: Vec<u16> = sent.iter().map(|r| r.status().as_u16()).collect();
        assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    }
    // Let the first period of every tenant end, and its grace pass.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    app.drain_relay().await;
    let before = chrono::Utc::now();
    let report = run(&app).await;
    assert_eq!(report["failed"], 0, "{report}");
    assert!(
        report["invoices_created"].as_u64().unwrap() >= 120,
        "{report}"
    );
    // ClickHouse's own log: the run read the usage of all 120 tenants (one page) in one
    // query, not one per tenant.
    let reads = usage_reads_naming(&app, &tenants, before).await;
    assert!(
        (1..=2).contains(&reads),
        "{reads} ClickHouse reads of the tenants' usage"
    );
    // Run again as of a moment the first run covered (a later moment may have closed
    // further 6-second periods by now).
    let grace = Duration::from_millis(300);
    let again = billing::invoices::run(&app.db, &app.clickhouse, before, grace, STRIPE)
        .await
        .unwrap();
    assert_eq!(
        again.invoices_created, 0,
        "a second run invoices nothing: {again:?}"
    );

    for tenant in &tenants {
        let list = app.get_json(&tenant.api_key, "/v1/invoices").await;
        let invoices = list["invoices"].as_array().unwrap();
        let first = invoices.last().expect("the first period is invoiced");
        let start = first["period_start"].as_str().unwrap();
        let expected = counters(&app, tenant, start).await;
        let mut billed: BTreeMap<String, u64> = BTreeMap::new();
        let mut sum = 0;
        for line in first["lines"].as_array().unwrap() {
            sum += line["amount"].as_i64().unwrap();
            if let Some(metric) = line["metric"].as_str() {
                *billed.entry(metric.to_owned()).or_default() += line["quantity"].as_u64().unwrap();
            }
        }
        billed.retain(|_, quantity| *quantity > 0);
        assert_eq!(billed, expected, "tenant {}", tenant.id);
        assert_eq!(sum, first["total"].as_i64().unwrap());
        // The same invoice by id, and nobody else's.
        let id = first["id"].as_str().unwrap();
        let one = app
            .get_json(&tenant.api_key, &format!("/v1/invoices/{id}"))
            .await;
        assert_eq!(&one, first);
        let other =
            &tenants[(tenants.iter().position(|t| t.id == tenant.id).unwrap() + 1) % tenants.len()];
        let response = app
            .get(&format!("/v1/invoices/{id}"))
            .bearer_auth(&other.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }

    let reconciliation = app.operator_get("/v1/admin/billing/reconciliation").await;
    assert!(reconciliation["invoices_checked"].as_u64().unwrap() >= 120);
    assert_eq!(reconciliation["mismatches"], json!([]), "{reconciliation}");
}

#[tokio::test]
async fn killed_and_overlapping_runs_make_one_invoice_per_period() {
    let app = TestApp::spawn_with(app_config).await;
    let mut tenants = Vec::new();
    for _ in 0..30 {
        let tenant = app
            .create_tenant_on_cycle("pro", TenantState::Active, false, BillingCycle::Seconds(2))
            .await;
        let response = app
            .ingest(
                &tenant.api_key,
                json!([{"id": "a", "metric": "tokens", "value": 25_000_000}]),
            )
            .await;
        assert_eq!(response.status(), 202);
        tenants.push(tenant);
    }
    let probe = app
        .create_tenant_on_cycle("pro", TenantState::Active, true, BillingCycle::Seconds(2))
        .await;
    assert_eq!(
        app.ingest(
            &probe.api_key,
            json!([{"id": "p", "metric": "tokens", "value": 1}])
        )
        .await
        .status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.drain_relay().await;
    let grace = Duration::from_millis(300);
    // Runs killed at arbitrary points (their futures dropped mid-way, as a crash would).
    for budget in [1, 5, 20, 50] {
        let _ = tokio::time::timeout(
            Duration::from_millis(budget),
            billing::invoices::run(&app.db, &app.clickhouse, chrono::Utc::now(), grace, STRIPE),
        )
        .await;
    }
    // Then three at once.
    let now = chrono::Utc::now();
    let runs = futures_util::future::join_all(
        (0..3).map(|_| billing::invoices::run(&app.db, &app.clickhouse, now, grace, STRIPE)),
    )
    .await;
    for run in runs {
        assert_eq!(run.unwrap().failed, 0);
    }
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (invoices, periods, synthetic): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (tenant_id, period_start)), \
                count(*) FILTER (WHERE tenant_id = $1) FROM invoices",
    )
    .bind(probe.id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(synthetic, 0, "a readiness probe is never billed");
    assert_eq!(invoices, periods);
    let first_periods: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invoices i JOIN tenants t ON t.id = i.tenant_id \
         WHERE i.period_start = t.billing_anchor",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        first_periods, 30,
        "one invoice for every tenant's first period"
    );
    // Each bills the 5,000,000 tokens past pro's 20,000,000 included.
    let overage: Vec<String> = sqlx::query_scalar(
        "SELECT sum(l.quantity)::text FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
         JOIN tenants t ON t.id = i.tenant_id \
         WHERE i.period_start = t.billing_anchor AND l.kind = 'overage' GROUP BY i.id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(overage.len(), 30);
    assert!(overage.iter().all(|q| q == "5000000"), "{overage:?}");
}

#[tokio::test]
async fn a_later_period_waits_while_an_earlier_one_waits_for_the_relay() {
    // No relay runs until the test drains it.
    let app = TestApp::spawn_with(|config| {
        app_config(config);
        config.workers.enabled = false;
    })
    .await;
    let tenant = app
        .create_tenant_on_cycle("pro", TenantState::Active, false, BillingCycle::Seconds(1))
        .await;
    let response = app
        .ingest(
            &tenant.api_key,
            json!([{"id": "late", "metric": "tokens", "value": 21_000_000}]),
        )
        .await;
    assert_eq!(response.status(), 202);
    // The first period (with the usage, not yet relayed) and the second (empty) end.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let grace = Duration::from_millis(300);
    let now = chrono::Utc::now();
    let report = billing::invoices::run(&app.db, &app.clickhouse, now, grace, STRIPE)
        .await
        .unwrap();
    assert_eq!(
        (report.invoices_created, report.waiting_for_relay),
        (0, 1),
        "nothing is invoiced past a period that waits: {report:?}"
    );

    app.drain_relay().await;
    let report = billing::invoices::run(&app.db, &app.clickhouse, now, grace, STRIPE)
        .await
        .unwrap();
    assert_eq!(report.waiting_for_relay, 0, "{report:?}");
    assert!(report.invoices_created >= 2, "{report:?}");
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let overage: Option<String> = sqlx::query_scalar(
        "SELECT sum(l.quantity)::text FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
         JOIN tenants t ON t.id = i.tenant_id \
         WHERE i.period_start = t.billing_anchor AND l.kind = 'overage'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        overage.as_deref(),
        Some("1000000"),
        "the first period bills the 1,000,000 tokens past pro's included 20,000,000"
    );
}

/// How many queries of per-minute usage finished since `since` name each of `tenants`.
async fn usage_reads_per_tenant(
    app: &TestApp,
    tenants: &[TestTenant],
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<usize> {
    let queries = usage_queries_since(app, since).await;
    tenants
        .iter()
        .map(|t| {
            let id = t.id.as_uuid().to_string();
            queries.iter().filter(|query| query.contains(&id)).count()
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_tenants_due_at_once_on_three_replicas_get_one_invoice_and_one_read_each() {
    // The test's app meters; the replicas started later invoice.
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let mut tenants = Vec::new();
    for _ in 0..1_000 {
        tenants.push(
            app.create_tenant_on_cycle(
                "starter",
                TenantState::Active,
                false,
                BillingCycle::Months(1),
            )
            .await,
        );
    }
    // Every tenant's first month ended yesterday; the next ends in a month.
    let anchor = chrono::Utc::now() - chrono::TimeDelta::days(32);
    let mut tx = app.db.system_tx("test setup").await.unwrap();
    let moved = sqlx::query("UPDATE tenants SET billing_anchor = $1, invoice_due_at = $1")
        .bind(anchor)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    tx.commit().await.unwrap();
    assert_eq!(moved, 1_000);
    let used_at = (anchor + chrono::TimeDelta::days(1)).to_rfc3339();
    for chunk in tenants.chunks(32) {
        let sent = futures_util::future::join_all(chunk.iter().map(|tenant| {
            let events =
                json!([{"id": "e1", "metric": "queries", "value": 7, "timestamp": used_at}]);
            app.ingest(&tenant.api_key, events)
        }))
        .await;
        assert!(sent.iter().all(|r| r.status() == 202));
    }
    app.drain_relay().await;

    let before = chrono::Utc::now();
    let replica = |_: ()| {
        app.spawn_replica(|config| {
            config.workers.enabled = true;
            config.billing.run_interval_ms = 100;
            // Invoices are collected elsewhere: no Stripe, no collection jobs.
            config.stripe.secret_key = None;
        })
    };
    let replicas = futures_util::future::join_all([(), (), ()].map(replica)).await;
    let invoiced = || async {
        let mut tx = app.db.system_tx("test count").await.unwrap();
        let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM invoices")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        count
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while invoiced().await < 1_000 {
        let count = invoiced().await;
        assert!(
            std::time::Instant::now() < deadline,
            "{count} of 1,000 invoiced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Many more runs' worth of time: still one invoice each, each tenant's usage read
    // by one replica once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(invoiced().await, 1_000);
    let reads = usage_reads_per_tenant(&app, &tenants, before).await;
    let read_twice = reads.iter().filter(|reads| **reads > 1).count();
    let never_read = reads.iter().filter(|reads| **reads == 0).count();
    assert_eq!((read_twice, never_read), (0, 0), "{reads:?}");
    // The scheduler queued them as jobs of a hundred tenants, and the job workers of
    // more than one replica ran them.
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (jobs, done, workers): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), count(DISTINCT locked_by) \
         FROM jobs WHERE kind = 'billing.invoice_tenants'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((jobs, done), (10, 10));
    assert!(workers >= 2, "invoice jobs ran on {workers} replica");
    drop(replicas);
}

#[tokio::test]
async fn a_run_reads_only_the_tenants_that_are_due() {
    let app = TestApp::spawn_with(|config| {
        app_config(config);
        config.workers.enabled = false;
    })
    .await;
    // Tenants whose first month has not ended: never looked at.
    for _ in 0..200 {
        app.create_tenant_on_cycle(
            "starter",
            TenantState::Active,
            false,
            BillingCycle::Months(1),
        )
        .await;
    }
    let mut due = Vec::new();
    for _ in 0..5 {
        let tenant = app
            .create_tenant_on_cycle("pro", TenantState::Active, false, BillingCycle::Seconds(1))
            .await;
        let events = json!([{"id": "a", "metric": "tokens", "value": 21_000_000}]);
        assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
        due.push(tenant);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    app.drain_relay().await;
    let now = chrono::Utc::now();
    let grace = Duration::from_millis(300);
    let report = billing::invoices::run(&app.db, &app.clickhouse, now, grace, STRIPE)
        .await
        .unwrap();
    assert_eq!(report.tenants_checked, 5, "{report:?}");
    assert!(report.invoices_created >= 5, "{report:?}");
    // Invoiced up to `now`: none is due again as of then.
    let again = billing::invoices::run(&app.db, &app.clickhouse, now, grace, STRIPE)
        .await
        .unwrap();
    assert_eq!((again.tenants_checked, again.invoices_created), (0, 0));
    // Each moved on to the end of its current period.
    let mut tx = app.db.system_tx("test read").await.unwrap();
    for tenant in &due {
        let (anchor, due_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("SELECT billing_anchor, invoice_due_at FROM tenants WHERE id = $1")
                .bind(tenant.id.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        let closed_before = now - chrono::TimeDelta::milliseconds(300);
        assert!(due_at > closed_before && due_at <= closed_before + chrono::TimeDelta::seconds(1));
        assert_eq!((due_at - anchor).num_milliseconds() % 1_000, 0);
    }
}
