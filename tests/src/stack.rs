//! Where the local stack is. Defaults match scripts/stack.sh.

pub const CLICKHOUSE_TEST_DATABASE: &str = "saas_test";
pub const STRIPE_TEST_KEY: &str = "sk_test_local_stack";

#[derive(Debug, Clone)]
pub struct Stack {
    pub pg_host: String,
    pub pg_port: u16,
    pub clickhouse_url: String,
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
            stripe_url: format!(
                "http://127.0.0.1:{}",
                env_or("SAAS_STACK_STRIPE_PORT", "8420")
            ),
        }
    }

    pub fn owner_url(&self, database: &str) -> String {
        format!(
            "postgres://saas_owner:saas_owner@{}:{}/{database}",
            self.pg_host, self.pg_port
        )
    }

    pub fn app_url(&self, database: &str) -> String {
        format!(
            "postgres://saas_app:saas_app@{}:{}/{database}",
            self.pg_host, self.pg_port
        )
    }

    pub fn clickhouse_settings(&self) -> metering::ClickHouseSettings {
        metering::ClickHouseSettings {
            url: self.clickhouse_url.clone(),
            database: CLICKHOUSE_TEST_DATABASE.to_owned(),
            user: "default".to_owned(),
            password: String::new(),
        }
    }
}
