//! Configuration: defaults from `default.toml` (compiled in), then an optional file named
//! by `SAAS_CONFIG_FILE`, then `SAAS_*` environment variables. Validated before anything
//! starts; secrets are wrapped so that printing a `Config` never shows them.

use std::fmt::Display;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use metering::ClickHouseSettings;
use metering::relay::RelaySettings;
use metering::retention::RetentionSettings;
use saas_core::BillingCycle;
use saas_core::schedule::Offsets;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

const DEFAULTS: &str = include_str!("../default.toml");
const MIN_OPERATOR_TOKEN_LEN: usize = 16;
const MAX_BODY_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// The longest dashboard session: thirty days.
const MAX_SESSION_TTL_MS: u64 = 30 * 86_400_000;
/// Longest a rotated-out webhook secret keeps signing.
pub const MAX_SECRET_OVERLAP_SECS: u64 = 7 * 86_400;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub operator_token: Option<SecretString>,
    pub migrate_on_start: bool,
    pub database: DatabaseConfig,
    pub clickhouse: ClickHouseConfig,
    pub stripe: StripeConfig,
    pub billing: BillingConfig,
    pub signups: SignupsConfig,
    pub dashboard: DashboardConfig,
    pub readiness: ReadinessConfig,
    pub smtp: SmtpConfig,
    pub winback: WinbackConfig,
    pub workers: WorkersConfig,
    pub webhooks: WebhooksConfig,
    pub roles: RolesConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    pub url: SecretString,
    pub migration_url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClickHouseConfig {
    /// Where usage is read; with a cluster, one of the shards.
    pub url: String,
    pub database: String,
    /// The service's user: reads and inserts in `database`, nothing more.
    pub user: String,
    pub password: SecretString,
    /// The schema's owner: migrations and erasure's deletes.
    pub owner_user: String,
    pub owner_password: SecretString,
    /// The cluster of shards, as the servers' `remote_servers` name it; empty: one
    /// server, at `url`.
    pub cluster: String,
    /// The HTTP URL of each shard of `cluster`, comma-separated, in the order of the
    /// servers' `remote_servers`.
    #[serde(deserialize_with = "parsed")]
    pub shards: UrlList,
    /// A CA certificate file (PEM) to trust for `https` URLs besides the system's roots;
    /// empty: the system's roots only.
    pub ca_file: String,
}

/// URLs, comma-separated in configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlList(pub Vec<String>);

impl FromStr for UrlList {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(UrlList(
            text.split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StripeConfig {
    pub secret_key: Option<SecretString>,
    pub api_base: String,
    pub allow_live_mode: bool,
    /// The signing secret of the webhook endpoint (`whsec_...`); unset: webhooks refused.
    pub webhook_secret: Option<SecretString>,
    pub webhook_tolerance_secs: i64,
    /// Each Stripe request (one attempt) gives up after this long; its outcome is then
    /// unknown, and the retry looks up by our ids before creating anything.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BillingConfig {
    /// `1mo`, `30s`, ...
    #[serde(deserialize_with = "parsed")]
    pub cycle: BillingCycle,
    pub close_grace_ms: u64,
    pub run_interval_ms: u64,
    /// Offsets from the first failed charge, e.g. `3d,5d,7d`.
    #[serde(deserialize_with = "parsed")]
    pub dunning_retries: Offsets,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SignupsConfig {
    pub rate_per_minute: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DashboardConfig {
    pub session_ttl_ms: u64,
    pub sign_ins_per_minute: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReadinessConfig {
    pub cache_ms: u64,
    pub public_max_age_ms: u64,
    pub check_timeout_ms: u64,
    /// How often the scheduler runs the checks (0: only when asked).
    pub run_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WinbackConfig {
    /// Offsets from the suspension, e.g. `3d,14d,30d`.
    #[serde(deserialize_with = "parsed")]
    pub steps: Offsets,
    pub offer_from_step: usize,
    pub offer_percent_off: u8,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpConfig {
    /// Unset: notifications stay in the outbox table for the operator.
    pub url: Option<SecretString>,
    pub from: String,
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhooksConfig {
    pub allow_http: bool,
    pub allow_private_addresses: bool,
    /// `name=address` entries asked before DNS.
    #[serde(deserialize_with = "parsed")]
    pub resolve: UrlList,
    pub system_dns: bool,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    #[serde(deserialize_with = "parsed")]
    pub retry_pauses: Pauses,
    pub secret_overlap_secs: u64,
    pub concurrency: usize,
}

/// Pauses, comma-separated with units (`5s,1m,100ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pauses(pub Vec<Duration>);

impl FromStr for Pauses {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        saas_core::schedule::parse_pauses(text).map(Pauses)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkersConfig {
    pub enabled: bool,
    pub relay_batch_size: u32,
    pub relay_idle_ms: u64,
    pub relay_timeout_ms: u64,
    pub dedup_window_secs: u64,
    pub ledger_slot_secs: u64,
    pub job_concurrency: usize,
    pub job_poll_ms: u64,
}

/// What this process runs. All on by default, so one process is a whole deployment;
/// replicas behind a load balancer may split them. `workers.enabled = false` turns every
/// background role off at once.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RolesConfig {
    /// The HTTP API and dashboard. Off: only `/livez`, `/readyz` and `/metrics`.
    pub api: bool,
    /// Copies the usage ledger to ClickHouse (one process at a time holds the cursor).
    pub relay: bool,
    /// Periodic work, done by one elected process at a time: invoice runs, requeueing
    /// stalled collections, the ledger's retention, sealing the audit chain.
    pub scheduler: bool,
    /// Runs queued jobs (onboarding, plan changes, collections, erasure, win-back).
    pub jobs: bool,
    /// Sends the notification outbox by SMTP.
    pub outbox: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpConfig {
    pub body_limit_bytes: usize,
    pub key_cache_ttl_ms: u64,
    pub sensitive_writes_per_minute: NonZeroU32,
    /// Usage batches of one tenant in flight at once in this process.
    pub ingest_batches_per_tenant: NonZeroU32,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` and
    /// `Forwarded` headers name the client; from anyone else those headers are ignored.
    #[serde(deserialize_with = "parsed")]
    pub trusted_proxies: crate::client_address::TrustedProxies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, the optional file, then the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Ok(path) = std::env::var("SAAS_CONFIG_FILE") {
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("SAAS_").split("__").ignore(&["config_file"]);
        Self::from_figment(figment.merge(env))
    }

    /// The compiled-in defaults alone, ignoring the environment: the base for tests.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let short_token = self
            .operator_token
            .as_ref()
            .is_some_and(|token| token.expose_secret().len() < MIN_OPERATOR_TOKEN_LEN);
        if short_token {
            return invalid(format!(
                "operator_token must be at least {MIN_OPERATOR_TOKEN_LEN} characters"
            ));
        }
        if self.http.body_limit_bytes == 0 || self.http.body_limit_bytes > MAX_BODY_LIMIT_BYTES {
            return invalid(format!(
                "http.body_limit_bytes must be between 1 and {MAX_BODY_LIMIT_BYTES}"
            ));
        }
        if self.http.request_timeout_ms == 0 {
            return invalid("http.request_timeout_ms must be positive".into());
        }
        if self.workers.job_concurrency == 0 {
            return invalid("workers.job_concurrency must be positive".into());
        }
        if self.workers.relay_batch_size == 0 {
            return invalid("workers.relay_batch_size must be positive".into());
        }
        if !(100..=600_000).contains(&self.workers.relay_timeout_ms) {
            return invalid("workers.relay_timeout_ms must be between 100 and 600000".into());
        }
        // At least three seconds, so each of the three key-taking generations lasts one.
        if !(3..=10 * 365 * 86_400).contains(&self.workers.dedup_window_secs) {
            return invalid("workers.dedup_window_secs must be between 3 and 315360000".into());
        }
        if !(1..=7 * 86_400).contains(&self.workers.ledger_slot_secs) {
            return invalid("workers.ledger_slot_secs must be between 1 and 604800".into());
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections must be positive".into());
        }
        for (name, url) in [
            ("database.url", &self.database.url),
            ("database.migration_url", &self.database.migration_url),
        ] {
            let url = url.expose_secret();
            let postgres_scheme =
                url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !postgres_scheme {
                return invalid(format!("{name} is not a valid Postgres URL"));
            }
            if let Err(error) = postgres_options(url) {
                return invalid(format!("{name}: {error}"));
            }
        }
        let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !http(&self.clickhouse.url) {
            return invalid("clickhouse.url must be an http(s) URL".into());
        }
        if !self.clickhouse.ca_file.is_empty() {
            match std::fs::read(&self.clickhouse.ca_file) {
                Err(error) => {
                    return invalid(format!("clickhouse.ca_file cannot be read: {error}"));
                }
                Ok(pem) => {
                    if let Err(error) = metering::tls::check_ca(&pem) {
                        return invalid(format!(
                            "clickhouse.ca_file holds no certificate: {error}"
                        ));
                    }
                }
            }
        }
        let shards = &self.clickhouse.shards.0;
        match (self.clickhouse.cluster.is_empty(), shards.is_empty()) {
            (true, true) => {}
            (true, false) | (false, true) => {
                return invalid("clickhouse.cluster and clickhouse.shards go together".into());
            }
            (false, false) => {
                if !shards.iter().all(|url| http(url)) {
                    return invalid("clickhouse.shards must be http(s) URLs".into());
                }
                // Reads go through the Distributed tables, which the migrations make on
                // the shards.
                if !shards.contains(&self.clickhouse.url) {
                    return invalid("clickhouse.url must be one of clickhouse.shards".into());
                }
            }
        }
        if let Some(key) = &self.stripe.secret_key {
            let key = key.expose_secret();
            let live = key.starts_with("sk_live_") || key.starts_with("rk_live_");
            let test = key.starts_with("sk_test_") || key.starts_with("rk_test_");
            if !live && !test {
                return invalid(
                    "stripe.secret_key must be a Stripe secret key (sk_test_...)".into(),
                );
            }
            if live && !self.stripe.allow_live_mode {
                return invalid(
                    "stripe.secret_key is a live-mode key; set stripe.allow_live_mode = true to use it"
                        .into(),
                );
            }
        }
        if self.winback.offer_percent_off == 0 || self.winback.offer_percent_off > 100 {
            return invalid("winback.offer_percent_off must be 1 to 100".into());
        }
        if self
            .stripe
            .webhook_secret
            .as_ref()
            .is_some_and(|secret| secret.expose_secret().trim().is_empty())
        {
            return invalid("stripe.webhook_secret must not be empty".into());
        }
        if self.stripe.webhook_tolerance_secs <= 0 {
            return invalid("stripe.webhook_tolerance_secs must be positive".into());
        }
        if !(1_000..=300_000).contains(&self.stripe.timeout_ms) {
            return invalid("stripe.timeout_ms must be between 1000 and 300000".into());
        }
        if self.billing.run_interval_ms == 0 {
            return invalid("billing.run_interval_ms must be positive".into());
        }
        // Added to timestamps: beyond this, date arithmetic would overflow at sign-in.
        if !(1_000..=MAX_SESSION_TTL_MS).contains(&self.dashboard.session_ttl_ms) {
            return invalid(format!(
                "dashboard.session_ttl_ms must be between 1000 and {MAX_SESSION_TTL_MS} (30 days)"
            ));
        }
        if self.http.ingest_batches_per_tenant.get() > self.database.max_connections {
            return invalid(
                "http.ingest_batches_per_tenant must be between 1 and database.max_connections"
                    .into(),
            );
        }
        if self.readiness.check_timeout_ms == 0 {
            return invalid("readiness.check_timeout_ms must be positive".into());
        }
        if self.webhooks.retry_pauses.0.len() > webhooks::delivery::MAX_RETRIES {
            return invalid(format!(
                "webhooks.retry_pauses may hold at most {} pauses",
                webhooks::delivery::MAX_RETRIES
            ));
        }
        if self.webhooks.secret_overlap_secs > MAX_SECRET_OVERLAP_SECS {
            return invalid("webhooks.secret_overlap_secs must be at most 604800 (7 days)".into());
        }
        if self.webhooks.concurrency == 0 || self.webhooks.timeout_ms == 0 {
            return invalid("webhooks.concurrency and webhooks.timeout_ms must be positive".into());
        }
        self.webhook_sender().map_err(ConfigError::Invalid)?;
        if self.smtp.poll_ms == 0 {
            return invalid("smtp.poll_ms must be positive".into());
        }
        if self.smtp.url.is_some() {
            self.mailer()
                .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        }
        Ok(())
    }

    pub fn winback_schedule(&self) -> lifecycle::WinbackSchedule {
        lifecycle::WinbackSchedule {
            steps: self.winback.steps.as_slice().to_vec(),
            offer_from_step: self.winback.offer_from_step,
            offer_percent_off: self.winback.offer_percent_off,
        }
    }

    /// The sender of webhook deliveries, with the address policy and resolver configured.
    pub fn webhook_sender(&self) -> Result<webhooks::Sender, String> {
        let config = &self.webhooks;
        let system: Option<Arc<dyn webhooks::Lookup>> = match config.system_dns {
            true => Some(Arc::new(webhooks::SystemLookup)),
            false => None,
        };
        let lookup = webhooks::StaticLookup::parse(&config.resolve.0, system)
            .map_err(|error| format!("webhooks.resolve: {error}"))?;
        webhooks::Sender::new(
            webhooks::AddressPolicy {
                allow_http: config.allow_http,
                allow_private: config.allow_private_addresses,
            },
            Arc::new(lookup),
            webhooks::Timeouts {
                connect: Duration::from_millis(config.connect_timeout_ms),
                total: Duration::from_millis(config.timeout_ms),
            },
        )
    }

    /// The SMTP sender, when SMTP is configured.
    pub fn mailer(&self) -> Result<Option<outbox::Mailer>, outbox::OutboxError> {
        self.smtp
            .url
            .as_ref()
            .map(|url| outbox::Mailer::new(url.expose_secret(), &self.smtp.from))
            .transpose()
    }

    pub fn database_options(&self) -> PgConnectOptions {
        // Validated above, so parsing cannot fail here.
        postgres_options(self.database.url.expose_secret())
            .expect("validated at load")
            .application_name("saas-gateway")
    }

    pub fn migration_options(&self) -> PgConnectOptions {
        postgres_options(self.database.migration_url.expose_secret())
            .expect("validated at load")
            .application_name("saas-migrate")
    }

    pub fn clickhouse_settings(&self) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.clickhouse.url.clone(),
            database: self.clickhouse.database.clone(),
            user: self.clickhouse.user.clone(),
            password: self.clickhouse.password.expose_secret().to_owned(),
            owner_user: self.clickhouse.owner_user.clone(),
            owner_password: self.clickhouse.owner_password.expose_secret().to_owned(),
            cluster: (!self.clickhouse.cluster.is_empty()).then(|| metering::ClusterSettings {
                name: self.clickhouse.cluster.clone(),
                shard_urls: self.clickhouse.shards.0.clone(),
            }),
            // Checked at load.
            ca_pem: (!self.clickhouse.ca_file.is_empty())
                .then(|| std::fs::read(&self.clickhouse.ca_file).ok())
                .flatten(),
        }
    }

    pub fn dunning_schedule(&self) -> billing::collection::DunningSchedule {
        billing::collection::DunningSchedule {
            retries: self.billing.dunning_retries.as_slice().to_vec(),
        }
    }

    pub fn billing_cycle(&self) -> BillingCycle {
        self.billing.cycle
    }

    pub fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            batch_size: self.workers.relay_batch_size,
            idle_wait: Duration::from_millis(self.workers.relay_idle_ms),
            timeout: Duration::from_millis(self.workers.relay_timeout_ms),
            ..RelaySettings::default()
        }
    }

    pub fn retention_settings(&self) -> RetentionSettings {
        RetentionSettings {
            dedup_window: Duration::from_secs(self.workers.dedup_window_secs),
            slot_width: Duration::from_secs(self.workers.ledger_slot_secs),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http.request_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.http.shutdown_grace_ms)
    }
}

/// The connection options of a Postgres URL. TLS only when the URL asks for it with
/// `sslmode`, and then only with the server's certificate verified: `verify-full` (or
/// `verify-ca`), with `sslrootcert=<file>` for a private CA. The modes that encrypt
/// without checking who answers (`allow`, `prefer`, `require`) are refused.
fn postgres_options(url: &str) -> Result<PgConnectOptions, String> {
    let options = PgConnectOptions::from_str(url).map_err(|_| "not a valid Postgres URL")?;
    let asks = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("sslmode=")));
    match options.get_ssl_mode() {
        // Not asked: plain, as before TLS was possible (the driver would otherwise try
        // TLS unverified).
        _ if !asks => Ok(options.ssl_mode(PgSslMode::Disable)),
        PgSslMode::Disable | PgSslMode::VerifyCa | PgSslMode::VerifyFull => Ok(options),
        mode => Err(format!(
            "sslmode {mode:?} encrypts without checking the server's certificate; use \
             sslmode=verify-full (with sslrootcert=<CA file> for a private CA)"
        )),
    }
}

/// A setting written as text and read into its type once, at load (an unreadable one
/// refuses the whole configuration, naming the key).
fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        for (key, value) in overrides {
            figment = figment.merge((*key, *value));
        }
        Config::from_figment(figment)
    }

    #[test]
    fn defaults_are_valid_and_listen_on_loopback_8080() {
        let config = Config::defaults().unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(config.operator_token.is_none());
        assert!(config.stripe.secret_key.is_none());
    }

    #[test]
    fn printing_the_configuration_never_shows_a_secret() {
        let config = with(&[
            ("operator_token", "operator-secret-value-123"),
            (
                "database.url",
                "postgres://saas_app:db-password-xyz@db/saas",
            ),
            ("stripe.secret_key", "sk_test_stripe_secret_abc"),
            ("clickhouse.password", "ch-password-789"),
            ("clickhouse.owner_password", "ch-owner-password-456"),
        ])
        .unwrap();
        let printed = format!("{config:?} {config:#?}");
        for secret in [
            "operator-secret-value-123",
            "db-password-xyz",
            "sk_test_stripe_secret_abc",
            "ch-password-789",
            "ch-owner-password-456",
        ] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
    }

    #[test]
    fn invalid_settings_are_refused_at_load() {
        for (key, value) in [
            ("operator_token", "short"),
            ("http.body_limit_bytes", "0"),
            ("http.request_timeout_ms", "0"),
            ("http.sensitive_writes_per_minute", "0"),
            ("http.ingest_batches_per_tenant", "0"),
            ("workers.relay_timeout_ms", "0"),
            ("workers.dedup_window_secs", "2"),
            ("workers.ledger_slot_secs", "0"),
            // Past the pool, the cap would not keep a tenant from taking all of it.
            ("http.ingest_batches_per_tenant", "33"),
            ("database.url", "mysql://nope"),
            // TLS without checking the server's certificate.
            ("database.url", "postgres://u:p@db/saas?sslmode=require"),
            (
                "database.migration_url",
                "postgres://u:p@db/saas?sslmode=prefer",
            ),
            ("clickhouse.url", "tcp://127.0.0.1:9000"),
            // A cluster needs its shards, and shards their cluster.
            ("clickhouse.cluster", "saas_usage"),
            ("clickhouse.shards", "http://127.0.0.1:8123"),
            ("clickhouse.ca_file", "/nonexistent/ca.crt"),
            ("clickhouse.ca_file", "Cargo.toml"),
            ("stripe.secret_key", "pk_test_publishable"),
            ("stripe.secret_key", "sk_live_real_money"),
            ("listen", "not an address"),
            ("billing.cycle", "monthly"),
            // Would overflow date arithmetic at run time (a panic per sign-in or step).
            ("dashboard.session_ttl_ms", "18446744073709551615"),
            ("dashboard.session_ttl_ms", "0"),
            ("winback.steps", "3d,99999999999d"),
            ("winback.steps", "30d,3d"),
            ("billing.dunning_retries", "1d,40000d"),
            ("stripe.timeout_ms", "0"),
        ] {
            assert!(with(&[(key, value)]).is_err(), "{key} = {value} accepted");
        }
    }

    #[test]
    fn postgres_tls_is_verified_when_asked_for_and_off_otherwise() {
        let mode = |url: &str| postgres_options(url).map(|o| o.get_ssl_mode());
        assert!(matches!(mode("postgres://u@db/s"), Ok(PgSslMode::Disable)));
        assert!(matches!(
            mode("postgres://u@db/s?sslmode=verify-full&sslrootcert=/ca.crt"),
            Ok(PgSslMode::VerifyFull)
        ));
        assert!(matches!(
            mode("postgres://u@db/s?application_name=x&sslmode=verify-ca"),
            Ok(PgSslMode::VerifyCa)
        ));
        for unverified in ["allow", "prefer", "require"] {
            assert!(mode(&format!("postgres://u@db/s?sslmode={unverified}")).is_err());
        }
    }

    #[test]
    fn a_cluster_is_read_through_one_of_its_shards() {
        let cluster = |url: &str, shards: &str| {
            with(&[
                ("clickhouse.url", url),
                ("clickhouse.cluster", "saas_usage"),
                ("clickhouse.shards", shards),
            ])
        };
        let config = cluster("http://a:8123", " http://a:8123, http://b:8123 ").unwrap();
        let settings = config.clickhouse_settings().cluster.unwrap();
        assert_eq!(settings.name, "saas_usage");
        assert_eq!(settings.shard_urls, ["http://a:8123", "http://b:8123"]);
        assert!(cluster("http://c:8123", "http://a:8123,http://b:8123").is_err());
        assert!(cluster("http://a:8123", "http://a:8123,tcp://b:9000").is_err());
        assert!(with(&[]).unwrap().clickhouse_settings().cluster.is_none());
    }

    #[test]
    fn live_stripe_keys_need_an_explicit_opt_in() {
        let figment = Figment::from(Toml::string(DEFAULTS))
            .merge(("stripe.secret_key", "sk_live_real_money"))
            .merge(("stripe.allow_live_mode", true));
        assert!(Config::from_figment(figment).is_ok());
    }
}
