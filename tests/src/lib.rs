//! The integration-test harness.
//!
//! [`TestApp::spawn`] starts the real service on port 0 against a fresh Postgres database
//! (cloned from a migrated template, which takes milliseconds), the stack's ClickHouse
//! and the stack's localstripe. `scripts/stack.sh test` brings the stack up first; the
//! addresses can be moved with the same `SAAS_STACK_*` variables the script reads.

mod browser;
mod child_process;
mod database;
mod stack;
mod stripe_api;
mod webhook_receiver;

use std::time::Duration;

use gateway::{Application, Config};
use metering::ClickHouseSink;
use metering::relay::Relay;
use saas_core::{ApiKeyId, TenantId, TenantState};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use tenancy::Db;
use tenancy::tenants::NewTenant;
use tokio::sync::oneshot;

pub use browser::Browser;
pub use child_process::{ServiceProcess, saas_binary};
pub use fault_proxy::{DyingCaller, FaultProxy, Mode as FaultMode};
pub use smtp_sink::{ReceivedMail, SmtpSink};
pub use stack::{
    CLICKHOUSE_CLUSTER, CLICKHOUSE_CLUSTER_TEST_DATABASE, CLICKHOUSE_SERVICE_PASSWORD,
    CLICKHOUSE_SERVICE_USER, CLICKHOUSE_TEST_DATABASE, STRIPE_TEST_KEY, Stack,
};
pub use stripe_api::{declining_card, stripe_get, stripe_post};
pub use webhook_receiver::WebhookReceiver;

pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    /// The service's own role on this test's database: row-level security applies.
    pub db: Db,
    /// The owner role on this test's database, for looking behind the service's back.
    pub owner_pool: PgPool,
    pub database_name: String,
    pub config: Config,
    /// The ClickHouse the app writes to (through its own URL, which may be a proxy).
    pub clickhouse: ClickHouseSink,
    _shutdown: oneshot::Sender<()>,
}

/// A tenant made directly in the store, with one API key.
#[derive(Debug, Clone)]
pub struct TestTenant {
    pub id: TenantId,
    pub key_id: ApiKeyId,
    pub api_key: String,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the app with the test configuration, adjusted by `customize` first.
    pub async fn spawn_with(customize: impl FnOnce(&mut Config)) -> TestApp {
        let stack = Stack::from_env();
        if std::env::var_os("TEST_LOG").is_some() {
            gateway::telemetry::init(&gateway::config::LogConfig {
                format: gateway::config::LogFormat::Pretty,
                filter: std::env::var("TEST_LOG").unwrap_or_default(),
            });
        }
        let database_name = database::fresh_database(&stack).await;

        let mut config = Config::defaults().expect("defaults are valid");
        config.listen = "127.0.0.1:0".parse().unwrap();
        // Webhook URLs resolve only through names a test gives: no DNS query leaves.
        config.webhooks.system_dns = false;
        config.migrate_on_start = false; // the template is migrated already
        config.database.url = SecretString::from(stack.app_url(&database_name));
        config.database.migration_url = SecretString::from(stack.owner_url(&database_name));
        config.database.max_connections = 10;
        // As many of a tenant's batches at once as there are connections: tests of
        // concurrent ingest reach the database with as many as can run together.
        config.http.ingest_batches_per_tenant = 10.try_into().unwrap();
        config.clickhouse.url = stack.clickhouse_url.clone();
        config.clickhouse.database = stack::CLICKHOUSE_TEST_DATABASE.to_owned();
        config.clickhouse.user = stack::CLICKHOUSE_SERVICE_USER.to_owned();
        config.clickhouse.password = SecretString::from(stack::CLICKHOUSE_SERVICE_PASSWORD);
        config.stripe.api_base = stack.stripe_url.clone();
        config.stripe.secret_key = Some(SecretString::from(stack::STRIPE_TEST_KEY));
        config.operator_token = Some(SecretString::from(OPERATOR_TOKEN));
        config.signups.rate_per_minute = 10_000.try_into().unwrap();
        config.http.sensitive_writes_per_minute = 10_000.try_into().unwrap();
        config.workers.job_poll_ms = 50;
        // Tests run the readiness checks when they ask for them.
        config.readiness.run_interval_ms = 0;
        customize(&mut config);

        Self::start(&stack, database_name, config).await
    }

    /// Another replica of the service on this test's database, its configuration
    /// changed by `customize`.
    pub async fn spawn_replica(&self, customize: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        customize(&mut config);
        Self::start(&Stack::from_env(), self.database_name.clone(), config).await
    }

    async fn start(stack: &Stack, database_name: String, config: Config) -> TestApp {
        let application = Application::build(config.clone())
            .await
            .expect("app builds");
        let port = application.port();
        let clickhouse = ClickHouseSink::new(&stack_clickhouse(stack, &config));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(application.run_until(async move {
            let _ = stopped.await;
        }));

        let db = Db::from_pool(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&stack.app_url(&database_name))
                .await
                .expect("connect as the service role"),
        );
        let owner_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&stack.owner_url(&database_name))
            .await
            .expect("connect as the owner role");

        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            db,
            owner_pool,
            database_name,
            config,
            clickhouse,
            _shutdown: shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Creates an active tenant on `plan` with one API key, straight in the store.
    pub async fn create_tenant(&self, plan: &str) -> TestTenant {
        self.create_tenant_in_state(plan, TenantState::Active, false)
            .await
    }

    pub async fn create_tenant_in_state(
        &self,
        plan: &str,
        state: TenantState,
        synthetic: bool,
    ) -> TestTenant {
        self.create_tenant_on_cycle(plan, state, synthetic, saas_core::BillingCycle::Months(1))
            .await
    }

    /// A tenant whose billing periods last `cycle` from now (short ones for whole cycles
    /// in a test).
    pub async fn create_tenant_on_cycle(
        &self,
        plan: &str,
        state: TenantState,
        synthetic: bool,
        cycle: saas_core::BillingCycle,
    ) -> TestTenant {
        let now = chrono::Utc::now();
        let id = TenantId::new();
        let mut tx = self.db.system_tx("test setup").await.unwrap();
        // An erased tenant gets no new key: its key is made first (as one that slipped
        // past the erasure would have been).
        let deleted = state == TenantState::Deleted;
        tenancy::tenants::insert(
            &mut tx,
            &NewTenant {
                id,
                name: format!("Test tenant {id}"),
                email: Some(format!("owner+{}@example.com", id.as_uuid().simple())),
                state: if deleted { TenantState::Active } else { state },
                plan_code: plan.to_owned(),
                billing_anchor: now,
                billing_cycle: cycle,
                synthetic,
                stripe_customer_id: None,
            },
        )
        .await
        .unwrap();
        let created = tenancy::api_keys::create(&mut tx, id, "test")
            .await
            .unwrap();
        if deleted {
            sqlx::query("UPDATE tenants SET state = 'deleted' WHERE id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        TestTenant {
            id,
            key_id: created.key.id,
            api_key: created.secret,
        }
    }

    /// Signs a tenant up through the real API and onboarding workflow (so it has a
    /// Stripe customer, and a subscription on paid plans) and waits for it.
    pub async fn sign_up_tenant(&self, plan: &str, payment_method: Option<&str>) -> SignedUpTenant {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let mut body = serde_json::json!({
            "email": format!("owner+{unique}@example.com"),
            "company": format!("Company {unique}"),
            "plan": plan,
        });
        if let Some(pm) = payment_method {
            body["payment_method"] = pm.into();
        }
        let created: Value = self
            .post("/v1/signups")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().expect("signup accepted").to_owned();
        let token = created["signup_token"].as_str().unwrap().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let signup: Value = self
                .get(&format!("/v1/signups/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match signup["status"].as_str() {
                Some("completed") => {
                    return SignedUpTenant {
                        id: signup["tenant_id"].as_str().unwrap().parse().unwrap(),
                        api_key: signup["api_key"].as_str().unwrap().to_owned(),
                    };
                }
                Some("failed") => panic!("signup failed: {signup}"),
                _ => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "signup stuck: {signup}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Copies everything committed so far to ClickHouse (the background relay does the
    /// same; this waits for it). The relay only copies below the oldest running
    /// transaction, so a transaction of a background worker can hold it back for a
    /// moment: keep going until the cursor has passed the newest row at the call.
    pub async fn drain_relay(&self) -> usize {
        let newest: Option<(i64, i64)> = {
            let mut tx = self.db.system_tx("test relay target").await.unwrap();
            sqlx::query_as(
                "SELECT ledger_xid, ledger_seq FROM usage_events \
                 ORDER BY ledger_xid DESC, ledger_seq DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await
            .unwrap()
        };
        let sink = ClickHouseSink::new(&stack_clickhouse(&Stack::from_env(), &self.config));
        let relay = Relay::new(self.db.clone(), sink, self.config.relay_settings());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut copied = 0;
        loop {
            copied += relay.drain().await.expect("relay drains");
            let mut tx = self.db.system_tx("test relay position").await.unwrap();
            let at = metering::relay::relay_position(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
            if newest.is_none_or(|target| (at.xid, at.seq) >= target) {
                return copied;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the relay does not catch up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the relay again from the beginning, as after losing its cursor, and drains
    /// it: every batch still in the ledger is written to ClickHouse a second time.
    /// Returns how many events it copied.
    pub async fn replay_relay_from_start(&self) -> usize {
        let mut tx = self.db.system_tx("test cursor reset").await.unwrap();
        sqlx::query("UPDATE usage_relay_cursor SET ledger_xid = 0, ledger_seq = 0")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        self.drain_relay().await
    }

    /// Whole events held in the Postgres ledger, every tenant's.
    pub async fn ledger_rows(&self) -> i64 {
        let mut tx = self.db.system_tx("test ledger rows").await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM usage_events")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    }

    /// Posts a batch of usage events as `api_key`.
    pub async fn ingest(&self, api_key: &str, events: Value) -> reqwest::Response {
        self.post("/v1/usage/events")
            .bearer_auth(api_key)
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await
            .unwrap()
    }

    /// Posts a batch as a client that honours 429 `rate_limited` would: sent again while
    /// too many of the tenant's batches are in flight. The final answer's status,
    /// headers and body.
    pub async fn ingest_until_admitted(
        &self,
        api_key: &str,
        events: Value,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
        loop {
            let response = self.ingest(api_key, events.clone()).await;
            let (status, headers) = (response.status(), response.headers().clone());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != 429 || body["error"]["code"] != "rate_limited" {
                return (status, headers, body);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The Prometheus page at /metrics.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Reads /metrics until `done` finds what it waits for in the page, for up to 20 s;
    /// then returns the page, or panics saying `what` was awaited.
    pub async fn metrics_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let page = self.metrics().await;
            if done(&page) {
                return page;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/metrics never showed {what}:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GETs `path` as `api_key` and returns the JSON body, asserting 200.
    pub async fn get_json(&self, api_key: &str, path: &str) -> Value {
        let response = self.get(path).bearer_auth(api_key).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// POSTs `body` to `path` as the tenant holding `api_key`.
    pub async fn post_as(&self, api_key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.post(path)
            .bearer_auth(api_key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` to an admin `path` with the operator token.
    pub async fn operator_post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post(path)
            .bearer_auth(OPERATOR_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// GETs an admin `path` with the operator token; the JSON body.
    pub async fn operator_get(&self, path: &str) -> Value {
        self.get(path)
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path))
    }
}

pub struct SignedUpTenant {
    pub id: TenantId,
    pub api_key: String,
}

/// Reads a JSON error body and returns its `error.code`, checking the standard shape
/// (code, message, request id matching the header) on the way.
pub async fn error_code(response: reqwest::Response) -> String {
    let header_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("every response carries x-request-id");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "error body is {content_type}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        error["request_id"].as_str(),
        Some(header_id.as_str()),
        "{body}"
    );
    let code = error["code"].as_str().expect("error.code").to_owned();
    assert!(
        code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "code {code:?}"
    );
    code
}

/// The value of `series` (a name, with its labels if it has any) on a /metrics page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The stack's ClickHouse, whatever URL the app was given (a test may point the app at a
/// dead address or a fault proxy), laid out as the app's configuration says.
fn stack_clickhouse(stack: &Stack, config: &Config) -> metering::ClickHouseSettings {
    let app = config.clickhouse_settings();
    metering::ClickHouseSettings {
        database: app.database,
        cluster: app.cluster,
        ..stack.clickhouse_settings()
    }
}
