//! Encrypted connections to Postgres and ClickHouse, with the server's certificate and
//! name verified: the service works over them, and refuses a server it cannot verify.
//! The stack's servers offer TLS with certificates for `localhost` (scripts/stack.sh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway::Config;
use integration_tests::{Stack, TestApp};
use metering::{ClickHouseSettings, ClickHouseSink};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn tls_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.stack/tls")
        .join(name)
}

/// The app's Postgres URL, over TLS to `host`, trusting `ca`.
fn over_tls(config: &Config, host: &str, ca: &str) -> SecretString {
    let url = config
        .database
        .url
        .expose_secret()
        .replace("@127.0.0.1:", &format!("@{host}:"));
    let ca = tls_file(ca);
    SecretString::from(url.replace(
        "sslmode=disable",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
}

#[tokio::test]
async fn the_service_talks_to_postgres_over_verified_tls() {
    let app = TestApp::spawn_with(|config| {
        config.database.url = over_tls(config, "localhost", "postgres-ca.crt");
    })
    .await;
    let tenant = app.create_tenant("pro").await;
    let events = json!([{"id": "a", "metric": "queries", "value": 3}]);
    assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
    let mut tx = app.db.system_tx("test read").await.unwrap();
    let (encrypted, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = current_database() AND a.application_name = 'saas-gateway'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(encrypted > 0, "no encrypted connection of the service");
    assert_eq!(plain, 0, "a plain connection of the service");
}

#[tokio::test]
async fn a_postgres_server_that_cannot_be_verified_is_refused() {
    let app = TestApp::spawn_with(|config| config.workers.enabled = false).await;
    let connect = |url: SecretString| {
        let mut config = app.config.clone();
        config.database.url = url;
        async move {
            config.validate().unwrap();
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(config.database_options())
                .await
        }
    };
    assert!(
        connect(over_tls(&app.config, "localhost", "postgres-ca.crt"))
            .await
            .is_ok()
    );
    let stack_certificate = std::fs::read(tls_file("postgres-ca.crt")).unwrap()
        == std::fs::read(tls_file("ca.crt")).unwrap();
    if stack_certificate {
        // The stack's certificate (the server had none of its own): trusting another CA
        // instead, the server is refused.
        let other = over_tls(&app.config, "localhost", "other-ca.crt");
        assert!(connect(other).await.is_err());
    } else {
        // The server's own certificate (Debian's, which this machine also trusts
        // system-wide) names localhost only: asked for by address, the name does not
        // match and the server is refused.
        let by_address = over_tls(&app.config, "127.0.0.1", "postgres-ca.crt");
        assert!(connect(by_address).await.is_err());
    }
}

fn https_settings(ca: Option<&str>) -> ClickHouseSettings {
    let port = std::env::var("SAAS_STACK_CH_HTTPS_PORT").unwrap_or_else(|_| "8443".into());
    ClickHouseSettings {
        url: format!("https://localhost:{port}"),
        ca_pem: ca.map(|name| std::fs::read(tls_file(name)).unwrap()),
        ..Stack::from_env().clickhouse_settings()
    }
}

#[tokio::test]
async fn clickhouse_over_https_is_verified() {
    let trusted = ClickHouseSink::new(&https_settings(Some("ca.crt")));
    assert!(trusted.server_version().await.is_ok());
    for untrusted in [https_settings(Some("other-ca.crt")), https_settings(None)] {
        let error = ClickHouseSink::new(&untrusted).server_version().await;
        assert!(error.is_err(), "a server no trusted CA signed was answered");
    }
}

#[tokio::test]
async fn the_service_meters_through_clickhouse_over_https() {
    let app = TestApp::spawn_with(|config| {
        let https = https_settings(None);
        config.clickhouse.url = https.url;
        config.clickhouse.ca_file = tls_file("ca.crt").display().to_string();
        config.workers.relay_idle_ms = 20;
    })
    .await;
    let tenant = app.create_tenant("pro").await;
    let events = json!([{"id": "a", "metric": "queries", "value": 41}]);
    assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
    // The service's own relay copies it over HTTPS, and its reads come back the same way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.clickhouse.event_count(tenant.id).await.unwrap() < 1 {
        assert!(Instant::now() < deadline, "not relayed over https");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let series = app
        .get_json(&tenant.api_key, "/v1/usage?metric=queries&granularity=day")
        .await;
    assert_eq!(series["total"], 41, "{series}");
}
