//! Where the local stack is. Defaults match scripts/stack.sh.

pub const CLICKHOUSE_TEST_DATABASE: &str = "saas_test";
/// The database of the tests of the sharded schema, on both servers of the cluster.
pub const CLICKHOUSE_CLUSTER_TEST_DATABASE: &str = "saas_test_cluster";
/// The service's ClickHouse user (scripts/clickhouse/users.xml): no DDL, only the
/// service's databases. Every test's service runs as it.
pub const CLICKHOUSE_SERVICE_USER: &str = "saas_app";
pub const CLICKHOUSE_SERVICE_PASSWORD: &str = "saas_app";
/// The two-shard cluster both local ClickHouse servers declare.
pub const CLICKHOUSE_CLUSTER: &str = "saas_usage";
pub const STRIPE_TEST_KEY: &str = "sk_test_local_stack";

#[derive(Debug, Clone)]
pub struct Stack {
    pub pg_host: String,
    pub pg_port: u16,
    pub clickhouse_url: String,
    /// The second shard of the cluster (the first is `clickhouse_url`).
    pub clickhouse_shard2_url: String,
    pub stripe_url: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Stack {
    pub fn from_env() -> Self {
        Self {
            pg_host: "127.0.0.1".to_owned(),
            pg_port: env_or("SAAS_STACK_PG_PORT", "5432")
                .parse()
                .expect("SAAS_STACK_PG_PORT"),
            clickhouse_url: format!(
                "http://127.0.0.1:{}",
                env_or("SAAS_STACK_CH_HTTP_PORT", "8123")
            ),
            clickhouse_shard2_url: format!(
                "http://127.0.0.1:{}",
                env_or("SAAS_STACK_CH2_HTTP_PORT", "8124")
            ),
            stripe_url: format!(
                "http://127.0.0.1:{}",
                env_or("SAAS_STACK_STRIPE_PORT", "8420")
            ),
        }
    }

    pub fn owner_url(&self, database: &str) -> String {
        format!(
            "postgres://saas_owner:saas_owner@{}:{}/{database}?sslmode=disable",
            self.pg_host, self.pg_port
        )
    }

    pub fn app_url(&self, database: &str) -> String {
        format!(
            "postgres://saas_app:saas_app@{}:{}/{database}?sslmode=disable",
            self.pg_host, self.pg_port
        )
    }

    pub fn clickhouse_settings(&self) -> metering::ClickHouseSettings {
        metering::ClickHouseSettings {
            url: self.clickhouse_url.clone(),
            database: CLICKHOUSE_TEST_DATABASE.to_owned(),
            user: "default".to_owned(),
            password: String::new(),
            owner_user: "default".to_owned(),
            owner_password: String::new(),
            cluster: None,
            ca_pem: None,
        }
    }

    /// The two-shard cluster, read through the first shard.
    pub fn cluster_settings(&self) -> metering::ClickHouseSettings {
        metering::ClickHouseSettings {
            database: CLICKHOUSE_CLUSTER_TEST_DATABASE.to_owned(),
            cluster: Some(metering::ClusterSettings {
                name: CLICKHOUSE_CLUSTER.to_owned(),
                shard_urls: vec![
                    self.clickhouse_url.clone(),
                    self.clickhouse_shard2_url.clone(),
                ],
            }),
            ..self.clickhouse_settings()
        }
    }
}
