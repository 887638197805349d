//! The service's ClickHouse user may do what the service does and nothing more. Every
//! test's service runs as it (reads, the relay's inserts, both shards of the cluster);
//! here it is refused DDL, mutations and other databases. Erasure's deletes run as the
//! schema's owner (tests/api/erasure.rs erases through a service running as this user).

use integration_tests::{CLICKHOUSE_SERVICE_PASSWORD, CLICKHOUSE_SERVICE_USER, Stack};
use metering::{ClickHouseSettings, ClickHouseSink};

fn as_service() -> ClickHouseSink {
    ClickHouseSink::new(&ClickHouseSettings {
        user: CLICKHOUSE_SERVICE_USER.to_owned(),
        password: CLICKHOUSE_SERVICE_PASSWORD.to_owned(),
        ..Stack::from_env().clickhouse_settings()
    })
}

#[tokio::test]
async fn the_service_user_reads_and_writes_usage_and_changes_no_schema() {
    let service = as_service();
    assert!(service.schema_present().await.unwrap());
    service
        .client()
        .query("SELECT count() FROM usage_minutes FINAL WHERE tenant_id = toUUID(?)")
        .bind(uuid::Uuid::nil().to_string())
        .fetch_one::<u64>()
        .await
        .expect("the service's reads");
    for statement in [
        "CREATE TABLE IF NOT EXISTS service_user_table (a UInt8) ENGINE = Memory",
        "DROP TABLE IF EXISTS service_user_no_such_table",
        // A delete is a mutation: DDL to ClickHouse. It deletes nothing here either way.
        "ALTER TABLE usage_events DELETE WHERE tenant_id = toUUID('00000000-0000-0000-0000-000000000000')",
    ] {
        let refused = service.client().query(statement).execute().await;
        let error = refused.expect_err(statement).to_string();
        assert!(
            error.contains("DDL queries are prohibited"),
            "{statement}: {error}"
        );
    }
}

#[tokio::test]
async fn the_service_user_sees_no_other_database() {
    let owner = ClickHouseSink::new(&Stack::from_env().clickhouse_settings());
    for statement in [
        "CREATE DATABASE IF NOT EXISTS saas_test_private",
        "CREATE TABLE IF NOT EXISTS saas_test_private.secrets (a UInt8) ENGINE = Memory",
    ] {
        owner.client().query(statement).execute().await.unwrap();
    }
    let read = as_service()
        .client()
        .query("SELECT count() FROM saas_test_private.secrets")
        .fetch_one::<u64>()
        .await;
    let error = read.expect_err("another database read").to_string();
    assert!(error.contains("Access denied"), "{error}");
}
