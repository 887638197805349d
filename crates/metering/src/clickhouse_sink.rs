//! The connection to ClickHouse and its versioned schema.
//!
//! The same SQL must run on ClickHouse 18.16 (what the native stack installs) and on
//! current releases (what container users get), so the schema sticks to the old subset
//! and the client's row-type validation, which relies on settings 18.16 lacks, is turned
//! on only when the server is new enough.

use clickhouse::Client;

/// Schema migrations, applied in order and recorded in `schema_migrations`.
/// Each file holds exactly one statement.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "usage_events",
        include_str!("../../../migrations/clickhouse/0001_usage_events.sql"),
    ),
    (
        2,
        "usage_minutes",
        include_str!("../../../migrations/clickhouse/0002_usage_minutes.sql"),
    ),
    (
        3,
        "usage_minutes_backfill",
        include_str!("../../../migrations/clickhouse/0003_usage_minutes_backfill.sql"),
    ),
];

/// First major release whose `DESCRIBE` understands the settings the client's
/// validation sends (`describe_include_subcolumns`).
const FIRST_VALIDATING_MAJOR: u32 = 22;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("ClickHouse unavailable: {0}")]
    Unavailable(#[source] clickhouse::error::Error),
    #[error("ClickHouse query failed: {0}")]
    Query(#[source] clickhouse::error::Error),
    #[error("unexpected ClickHouse version string {0:?}")]
    Version(String),
    #[error("ClickHouse returned unexpected data: {0}")]
    Corrupt(String),
}

impl From<clickhouse::error::Error> for SinkError {
    fn from(error: clickhouse::error::Error) -> Self {
        match error {
            clickhouse::error::Error::Network(_) => SinkError::Unavailable(error),
            other => SinkError::Query(other),
        }
    }
}

#[derive(Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// A handle on the usage database. Cheap to clone.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    database: String,
}

impl ClickHouseSink {
    /// A client for `settings.database`, with validation off until [`Self::detect_version`]
    /// has seen the server.
    pub fn new(settings: &ClickHouseSettings) -> Self {
        let client = server_client(settings).with_database(&settings.database);
        Self {
            client,
            database: settings.database.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Asks the server its version and enables row validation where it is supported.
    /// Returns the version string.
    pub async fn detect_version(&mut self) -> Result<String, SinkError> {
        let version = self.server_version().await?;
        let major = version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .ok_or_else(|| SinkError::Version(version.clone()))?;
        self.client = self
            .client
            .clone()
            .with_validation(major >= FIRST_VALIDATING_MAJOR);
        Ok(version)
    }

    pub async fn server_version(&self) -> Result<String, SinkError> {
        Ok(self
            .client
            .query("SELECT version()")
            .fetch_one::<String>()
            .await?)
    }

    /// Creates the database if needed and applies every migration not yet recorded.
    /// Safe to run concurrently and repeatedly: every statement is `IF NOT EXISTS`.
    pub async fn migrate(settings: &ClickHouseSettings) -> Result<Vec<u32>, SinkError> {
        let server = server_client(settings);
        // The name goes into DDL, so only plain identifiers are accepted.
        if !is_identifier(&settings.database) {
            return Err(SinkError::Version(format!(
                "invalid database name {:?}",
                settings.database
            )));
        }
        server
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                settings.database
            ))
            .execute()
            .await?;
        let client = server.with_database(&settings.database);
        client
            .query(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version UInt32, name String, applied_at DateTime DEFAULT now()) \
                 ENGINE = ReplacingMergeTree ORDER BY version",
            )
            .execute()
            .await?;
        let applied: Vec<u32> = client
            .query("SELECT DISTINCT version FROM schema_migrations")
            .fetch_all::<u32>()
            .await?;
        let mut newly_applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS {
            if applied.contains(&version) {
                continue;
            }
            client.query(sql).execute().await?;
            client
                .query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
                .bind(version)
                .bind(name)
                .execute()
                .await?;
            tracing::info!(version, name, "applied ClickHouse migration");
            newly_applied.push(version);
        }
        Ok(newly_applied)
    }

    /// Whether every table the schema defines exists, for readiness.
    pub async fn schema_present(&self) -> Result<bool, SinkError> {
        let count = self
            .client
            .query(
                "SELECT count() FROM system.tables \
                 WHERE database = ? AND name IN ('usage_events', 'usage_minutes')",
            )
            .bind(&self.database)
            .fetch_one::<u64>()
            .await?;
        Ok(count == 2)
    }
}

fn server_client(settings: &ClickHouseSettings) -> Client {
    Client::default()
        .with_url(&settings.url)
        .with_user(&settings.user)
        .with_password(&settings.password)
        .with_validation(false)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_must_be_plain_identifiers() {
        assert!(is_identifier("saas"));
        assert!(is_identifier("saas_test_1"));
        assert!(!is_identifier("1saas"));
        assert!(!is_identifier("saas; DROP TABLE x"));
        assert!(!is_identifier(""));
    }

    #[test]
    fn migrations_are_ordered_and_single_statement() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].0 < pair[1].0);
        }
        for (_, name, sql) in MIGRATIONS {
            let code: String = sql
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let statements = code.split(';').filter(|s| !s.trim().is_empty());
            assert_eq!(statements.count(), 1, "{name} must hold one statement");
        }
    }
}
