//! ClickHouse as a cluster of two shards (the two local servers): each tenant's usage
//! lives on one shard, reads through the `Distributed` tables are exact, a relay that
//! replays everything counts nothing twice, invoices bill exactly the usage, and an
//! erasure leaves nothing on any shard.

use std::collections::BTreeMap;
use std::time::Duration;

use billing::invoices::Collection;
use gateway::config::UrlList;
use integration_tests::{
    CLICKHOUSE_CLUSTER, CLICKHOUSE_CLUSTER_TEST_DATABASE, Stack, TestApp, TestTenant,
};
use metering::shards::shard_of;
use metering::{ClickHouseSettings, ClickHouseSink};
use saas_core::{BillingCycle, TenantState};
use serde_json::{Value, json};

const SHARDS: usize = 2;

async fn cluster_app() -> TestApp {
    let stack = Stack::from_env();
    ClickHouseSink::migrate(&stack.cluster_settings())
        .await
        .expect("the sharded schema on both servers");
    TestApp::spawn_with(|config| {
        // The test relays and invoices itself.
        config.workers.enabled = false;
        config.clickhouse.database = CLICKHOUSE_CLUSTER_TEST_DATABASE.to_owned();
        config.clickhouse.cluster = CLICKHOUSE_CLUSTER.to_owned();
        config.clickhouse.shards = UrlList(vec![
            stack.clickhouse_url.clone(),
            stack.clickhouse_shard2_url.clone(),
        ]);
    })
    .await
}

/// A client of each shard's server (its `client()` reads that server only; the local
/// tables are named in the queries).
fn shard_servers() -> Vec<ClickHouseSink> {
    let stack = Stack::from_env();
    [
        stack.clickhouse_url.clone(),
        stack.clickhouse_shard2_url.clone(),
    ]
    .into_iter()
    .map(|url| {
        ClickHouseSink::new(&ClickHouseSettings {
            url,
            ..stack.cluster_settings()
        })
    })
    .collect()
}

/// The tenant's event and minute rows in each shard's local tables (replays not yet
/// merged away counted once).
async fn rows_per_shard(tenant: &TestTenant) -> Vec<(u64, u64)> {
    let mut rows = Vec::new();
    for server in shard_servers() {
        let count = |table: &'static str| {
            server
                .client()
                .query(&format!(
                    "SELECT count() FROM {table} FINAL WHERE tenant_id = toUUID(?)"
                ))
                .bind(tenant.id.as_uuid().to_string())
                .fetch_one::<u64>()
        };
        rows.push((
            count("usage_events_local").await.unwrap(),
            count("usage_minutes_local").await.unwrap(),
        ));
    }
    rows
}

/// What the API and the invoice-side reads say the tenant used this period, per metric.
async fn used(app: &TestApp, tenant: &TestTenant) -> BTreeMap<String, u64> {
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let start: chrono::DateTime<chrono::Utc> =
        summary["period_start"].as_str().unwrap().parse().unwrap();
    let totals: BTreeMap<String, u64> = app
        .clickhouse
        .period_totals(tenant.id, start)
        .await
        .unwrap()
        .into_iter()
        .map(|(metric, total)| (metric.to_string(), u64::try_from(total).unwrap()))
        .collect();
    for (metric, total) in &totals {
        assert_eq!(
            summary["metrics"][metric]["used"].as_u64(),
            Some(*total),
            "{summary}"
        );
    }
    totals
}

#[tokio::test]
async fn two_shards_keep_each_tenant_whole_and_every_read_invoice_and_erasure_exact() {
    let app = cluster_app().await;
    let mut tenants = Vec::new();
    let mut expected: Vec<BTreeMap<String, u64>> = Vec::new();
    for n in 0..16u64 {
        // Hour-long periods, closed below by invoicing as of an hour on.
        let tenant = app
            .create_tenant_on_cycle(
                "pro",
                TenantState::Active,
                false,
                BillingCycle::Seconds(3600),
            )
            .await;
        let mut totals = BTreeMap::new();
        for batch in 0..3u64 {
            let events: Vec<Value> = (0..4u64)
                .map(|i| {
                    let metric = ["tokens", "queries"][((n + batch + i) % 2) as usize];
                    let value = 1_000 * (n + 1) + 10 * batch + i;
                    *totals.entry(metric.to_owned()).or_insert(0) += value;
                    json!({"id": format!("b{batch}-{i}"), "metric": metric, "value": value})
                })
                .collect();
            let body = Value::Array(events);
            assert_eq!(
                app.ingest(&tenant.api_key, body.clone()).await.status(),
                202
            );
            if batch == 0 {
                // A client's retry: counted once.
                assert_eq!(app.ingest(&tenant.api_key, body).await.status(), 202);
            }
        }
        tenants.push(tenant);
        expected.push(totals);
    }
    app.drain_relay().await;

    // Each tenant's rows on its own shard only, and both shards in use.
    let mut shards_used = [false; SHARDS];
    for tenant in &tenants {
        let rows = rows_per_shard(tenant).await;
        let home = shard_of(tenant.id, SHARDS);
        for (shard, (events, minutes)) in rows.iter().enumerate() {
            if shard == home {
                assert_eq!(
                    *events, 12,
                    "tenant {} on shard {shard}: {rows:?}",
                    tenant.id
                );
                assert!(*minutes > 0);
            } else {
                assert_eq!(
                    (*events, *minutes),
                    (0, 0),
                    "tenant {} split: {rows:?}",
                    tenant.id
                );
            }
        }
        shards_used[home] = true;
    }
    assert_eq!(shards_used, [true; SHARDS]);
    for (tenant, totals) in tenants.iter().zip(&expected) {
        assert_eq!(&used(&app, tenant).await, totals, "tenant {}", tenant.id);
    }

    // The relay starts again from the beginning: every batch reaches its shard twice.
    assert_eq!(app.replay_relay_from_start().await, 16 * 12);
    for (tenant, totals) in tenants.iter().zip(&expected) {
        assert_eq!(
            &used(&app, tenant).await,
            totals,
            "replayed: tenant {}",
            tenant.id
        );
    }

    // Invoices read their totals through the cluster, a page of tenants per query.
    let an_hour_on = chrono::Utc::now() + chrono::TimeDelta::seconds(3_601);
    let report = billing::invoices::run(
        &app.db,
        &app.clickhouse,
        an_hour_on,
        Duration::from_millis(300),
        Collection::Elsewhere,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.invoices_created, report.failed),
        (16, 0),
        "{report:?}"
    );
    for (tenant, totals) in tenants.iter().zip(&expected) {
        let list = app.get_json(&tenant.api_key, "/v1/invoices").await;
        let invoice = &list["invoices"][0];
        let mut billed: BTreeMap<String, u64> = BTreeMap::new();
        for line in invoice["lines"].as_array().unwrap() {
            if let Some(metric) = line["metric"].as_str() {
                *billed.entry(metric.to_owned()).or_default() += line["quantity"].as_u64().unwrap();
            }
        }
        billed.retain(|_, quantity| *quantity > 0);
        assert_eq!(&billed, totals, "tenant {}: {invoice}", tenant.id);
    }
    let reconciliation = app.operator_get("/v1/admin/billing/reconciliation").await;
    assert_eq!(reconciliation["invoices_checked"], 16, "{reconciliation}");
    assert_eq!(reconciliation["mismatches"], json!([]), "{reconciliation}");

    // An erasure deletes on every shard and leaves the other tenants' usage alone.
    let erased = &tenants[0];
    let events = app
        .clickhouse
        .erase_tenant(erased.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(events, 12);
    assert_eq!(rows_per_shard(erased).await, vec![(0, 0); SHARDS]);
    assert_eq!(app.clickhouse.event_count(erased.id).await.unwrap(), 0);
    for tenant in &tenants[1..] {
        assert_eq!(
            rows_per_shard(tenant)
                .await
                .iter()
                .map(|(e, _)| e)
                .sum::<u64>(),
            12
        );
    }
}

#[tokio::test]
async fn a_database_of_one_layout_is_refused_for_the_other() {
    let stack = Stack::from_env();
    // The tests' single-server database configured as a cluster, and the cluster's
    // database as one server: both refused, before anything is created.
    ClickHouseSink::migrate(&stack.clickhouse_settings())
        .await
        .unwrap();
    ClickHouseSink::migrate(&stack.cluster_settings())
        .await
        .unwrap();
    let single_as_cluster = ClickHouseSettings {
        cluster: stack.cluster_settings().cluster,
        ..stack.clickhouse_settings()
    };
    let cluster_as_single = ClickHouseSettings {
        cluster: None,
        ..stack.cluster_settings()
    };
    for settings in [single_as_cluster, cluster_as_single] {
        let error = ClickHouseSink::migrate(&settings).await.unwrap_err();
        assert!(matches!(error, metering::SinkError::Layout(_)), "{error}");
    }
    let tables: Vec<String> = shard_servers()[0]
        .client()
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(integration_tests::CLICKHOUSE_TEST_DATABASE)
        .fetch_all()
        .await
        .unwrap();
    assert!(!tables.iter().any(|t| t.ends_with("_local")), "{tables:?}");
}
