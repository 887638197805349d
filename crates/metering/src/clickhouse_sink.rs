//! The connection to ClickHouse and its versioned schema.
//!
//! The same SQL must run on ClickHouse 18.16 (what the native stack installs) and on
//! current releases (what container users get), so the schema sticks to the old subset
//! and the client's row-type validation, which relies on settings 18.16 lacks, is turned
//! on only when the server is new enough.
//!
//! The usage tables live on one server or on a cluster of shards (see
//! [`crate::shards`]); reads go to `url` either way, writes to each shard.

use std::sync::Arc;

use clickhouse::Client;

use crate::shards::{ClusterSettings, LocalTables, SHARD_LOCAL, SINGLE_SERVER, for_shard};

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
    /// The tables do not have the shape the configuration expects (a cluster's
    /// `Distributed` tables on a single server, say).
    #[error("ClickHouse schema does not fit the configuration: {0}")]
    Layout(String),
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
    /// The service's user: reads and inserts in its database, nothing else.
    pub user: String,
    pub password: String,
    /// The user that owns the schema: runs the migrations and erasure's deletes (a
    /// mutation is DDL to ClickHouse 18.16, which the service's user may not run).
    pub owner_user: String,
    pub owner_password: String,
    /// A cluster of shards; `None`: one server, at `url`. With a cluster, `url` is one of
    /// the shards, and reads go there.
    pub cluster: Option<ClusterSettings>,
    /// For `https` URLs: a CA certificate (PEM) to trust besides the system's roots, for
    /// servers whose certificates a private CA signed. Certificates and host names are
    /// always verified.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .field("owner_user", &self.owner_user)
            .field("cluster", &self.cluster)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "[set]"))
            .finish()
    }
}

/// A handle on the usage database. Cheap to clone.
#[derive(Clone)]
pub struct ClickHouseSink {
    /// Reads (through the `Distributed` tables on a cluster).
    client: Client,
    database: String,
    /// Writes: one client per shard, in the cluster's order (one server is its own only
    /// shard).
    shards: Arc<[Client]>,
    /// Deletes: the same shards as the schema's owner.
    owners: Arc<[Client]>,
    local: LocalTables,
}

/// Whose credentials a client uses.
#[derive(Clone, Copy)]
enum As {
    Service,
    Owner,
}

impl ClickHouseSink {
    /// A client for `settings.database`, with validation off until [`Self::detect_version`]
    /// has seen the server.
    pub fn new(settings: &ClickHouseSettings) -> Self {
        let database = |client: Client| client.with_database(&settings.database);
        let client = database(server_client(settings, &settings.url, As::Service));
        let (urls, local) = match &settings.cluster {
            None => (vec![settings.url.clone()], SINGLE_SERVER),
            Some(cluster) => (cluster.shard_urls.clone(), SHARD_LOCAL),
        };
        let shards = |role| -> Arc<[Client]> {
            urls.iter()
                .map(|url| database(server_client(settings, url, role)))
                .collect()
        };
        Self {
            shards: shards(As::Service),
            owners: shards(As::Owner),
            client,
            database: settings.database.clone(),
            local,
        }
    }

    /// The clients of the shards, in the cluster's order, and the tables to write there.
    pub(crate) fn shards(&self) -> (&[Client], LocalTables) {
        (&self.shards, self.local)
    }

    /// The shards as the schema's owner, for deletes.
    pub(crate) fn owner_shards(&self) -> (&[Client], LocalTables) {
        (&self.owners, self.local)
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
        let validate = major >= FIRST_VALIDATING_MAJOR;
        self.client = self.client.clone().with_validation(validate);
        let validating = |clients: &Arc<[Client]>| -> Arc<[Client]> {
            clients
                .iter()
                .map(|shard| shard.clone().with_validation(validate))
                .collect()
        };
        self.shards = validating(&self.shards);
        self.owners = validating(&self.owners);
        Ok(version)
    }

    pub async fn server_version(&self) -> Result<String, SinkError> {
        Ok(self
            .client
            .query("SELECT version()")
            .fetch_one::<String>()
            .await?)
    }

    /// Creates the database if needed and applies every migration not yet recorded, on
    /// the one server or on every shard (with the `Distributed` tables over them).
    /// Safe to run concurrently and repeatedly: every statement is `IF NOT EXISTS`.
    pub async fn migrate(settings: &ClickHouseSettings) -> Result<Vec<u32>, SinkError> {
        // The names go into DDL, so only plain identifiers are accepted.
        if !is_identifier(&settings.database) {
            return Err(SinkError::Version(format!(
                "invalid database name {:?}",
                settings.database
            )));
        }
        let Some(cluster) = &settings.cluster else {
            let server = server_client(settings, &settings.url, As::Owner);
            check_layout(&server, &settings.database, false).await?;
            return migrate_server(&server, &settings.database, |sql| sql.to_owned()).await;
        };
        if !is_identifier(&cluster.name) {
            return Err(SinkError::Layout(format!(
                "invalid cluster name {:?}",
                cluster.name
            )));
        }
        // Every shard is checked before any is changed.
        for url in &cluster.shard_urls {
            check_layout(
                &server_client(settings, url, As::Owner),
                &settings.database,
                true,
            )
            .await?;
        }
        let mut applied = Vec::new();
        for url in &cluster.shard_urls {
            let server = server_client(settings, url, As::Owner);
            applied.extend(migrate_server(&server, &settings.database, for_shard).await?);
            let database = &settings.database;
            for (table, local) in [
                (SINGLE_SERVER.events, SHARD_LOCAL.events),
                (SINGLE_SERVER.minutes, SHARD_LOCAL.minutes),
            ] {
                // No sharding key: inserts through it are refused (see `crate::shards`).
                server
                    .query(&format!(
                        "CREATE TABLE IF NOT EXISTS {database}.{table} AS {database}.{local} \
                         ENGINE = Distributed({}, {database}, {local})",
                        cluster.name
                    ))
                    .execute()
                    .await?;
            }
        }
        applied.sort_unstable();
        applied.dedup();
        Ok(applied)
    }

    /// Whether every table the schema defines exists where it is read and on every
    /// shard (each of which must answer), for readiness.
    pub async fn schema_present(&self) -> Result<bool, SinkError> {
        let has = |client: &Client, tables: [&'static str; 2]| {
            client
                .query("SELECT count() FROM system.tables WHERE database = ? AND name IN (?, ?)")
                .bind(&self.database)
                .bind(tables[0])
                .bind(tables[1])
                .fetch_one::<u64>()
        };
        if has(&self.client, [SINGLE_SERVER.events, SINGLE_SERVER.minutes]).await? != 2 {
            return Ok(false);
        }
        // One server is its own only shard, and was just asked.
        if self.local == SHARD_LOCAL {
            for shard in self.shards.iter() {
                if has(shard, [self.local.events, self.local.minutes]).await? != 2 {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Applies the migrations not yet recorded in `database` on one server, each rewritten
/// by `adapt` (for a shard: to its local tables).
async fn migrate_server(
    server: &Client,
    database: &str,
    adapt: impl Fn(&str) -> String,
) -> Result<Vec<u32>, SinkError> {
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await?;
    let client = server.clone().with_database(database);
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
        client.query(&adapt(sql)).execute().await?;
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

/// Refuses a database whose read tables are of the other layout: a database used by one
/// server and then configured as a shard (or back) would have its writes and its reads
/// in different tables.
async fn check_layout(server: &Client, database: &str, cluster: bool) -> Result<(), SinkError> {
    let engines: Vec<(String, String)> = server
        .query(
            "SELECT name, engine FROM system.tables \
             WHERE database = ? AND name IN ('usage_events', 'usage_minutes')",
        )
        .bind(database)
        .fetch_all()
        .await?;
    for (table, engine) in engines {
        if (engine == "Distributed") != cluster {
            return Err(SinkError::Layout(format!(
                "{database}.{table} is {engine}, but the configuration says {}",
                if cluster { "a cluster" } else { "one server" }
            )));
        }
    }
    Ok(())
}

fn server_client(settings: &ClickHouseSettings, url: &str, role: As) -> Client {
    let client = match &settings.ca_pem {
        None => Client::default(),
        Some(pem) => match crate::tls::http_client_trusting(pem) {
            Ok(client) => Client::with_http_client(client),
            Err(error) => {
                // Checked when the configuration was loaded; the system's roots alone
                // still verify, so a server the CA signed is refused, not trusted blindly.
                tracing::error!(%error, "ClickHouse CA certificate unusable");
                Client::default()
            }
        },
    };
    let (user, password) = match role {
        As::Service => (&settings.user, &settings.password),
        As::Owner => (&settings.owner_user, &settings.owner_password),
    };
    client
        .with_url(url)
        .with_user(user)
        .with_password(password)
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
