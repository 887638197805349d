//! Shared pieces of the benchmark programs: a scratch database, the service as a child
//! process, and percentile arithmetic.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

pub const OWNER: &str = "saas_owner:saas_owner";
pub const APP: &str = "saas_app:saas_app";

pub fn pg_url(role: &str, database: &str) -> String {
    let port = std::env::var("SAAS_STACK_PG_PORT").unwrap_or_else(|_| "5432".into());
    format!("postgres://{role}@127.0.0.1:{port}/{database}")
}

pub fn clickhouse_url() -> String {
    let port = std::env::var("SAAS_STACK_CH_HTTP_PORT").unwrap_or_else(|_| "8123".into());
    format!("http://127.0.0.1:{port}")
}

/// Drops and recreates `database` (Postgres and ClickHouse) and migrates both.
pub async fn fresh_database(database: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&pg_url(OWNER, "postgres"))
        .await
        .context("connect to Postgres as saas_owner (run scripts/stack.sh up first)")?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        format!("CREATE DATABASE {database}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
    }
    let mut conn = PgConnection::connect(&pg_url(OWNER, database)).await?;
    tenancy::MIGRATOR.run(&mut conn).await?;
    let settings = clickhouse_settings(database);
    let server = clickhouse::Client::default().with_url(&settings.url);
    server
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await
        .context("reach ClickHouse")?;
    metering::ClickHouseSink::migrate(&settings).await?;
    Ok(())
}

pub fn clickhouse_settings(database: &str) -> metering::ClickHouseSettings {
    metering::ClickHouseSettings {
        url: clickhouse_url(),
        database: database.to_owned(),
        user: "default".into(),
        password: String::new(),
    }
}

/// `saas serve` built in the same profile as this program, as a child process.
pub struct Service {
    pub port: u16,
    pub child: Child,
}

impl Service {
    pub async fn start(database: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Service> {
        let binary: PathBuf = std::env::current_exe()?.with_file_name("saas");
        if !binary.exists() {
            bail!(
                "{} not found: build it in the same profile, e.g. \
                 cargo build --release --bin saas --bin ingest-bench",
                binary.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .arg("serve")
            .env("SAAS_LISTEN", format!("127.0.0.1:{port}"))
            .env("SAAS_DATABASE__URL", pg_url(APP, database))
            .env("SAAS_DATABASE__MIGRATION_URL", pg_url(OWNER, database))
            .env("SAAS_MIGRATE_ON_START", "false")
            .env("SAAS_CLICKHOUSE__URL", clickhouse_url())
            .env("SAAS_CLICKHOUSE__DATABASE", database)
            .env("SAAS_LOG__FILTER", "warn")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let service = Service { port, child };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if client
                .get(service.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(service);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the service did not start")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_memory_mib(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

/// A localstripe of the benchmark's own, empty and in memory: localstripe answers more
/// slowly as its store grows (its lists are scans), so a shared one that tests have
/// filled would not give comparable figures.
pub struct OwnLocalstripe {
    pub url: String,
    /// One JSON line per Stripe API request the fake received.
    pub request_log: PathBuf,
    _child: Child,
}

impl OwnLocalstripe {
    pub async fn start() -> anyhow::Result<OwnLocalstripe> {
        let launcher =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/localstripe_faithful.py");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let state = std::env::temp_dir().join(format!("bench-localstripe-{port}.pickle"));
        let request_log = std::env::temp_dir().join(format!("bench-localstripe-{port}.requests"));
        let _ = std::fs::remove_file(&request_log);
        let child = Command::new("python3")
            .arg(&launcher)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--from-scratch", "--in-memory"])
            .env("LOCALSTRIPE_STATE_FILE", state)
            .env("LOCALSTRIPE_REQUEST_LOG", &request_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start localstripe (pip install localstripe==1.15.10)")?;
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = client
                .get(format!("{url}/v1/customers?limit=1"))
                .basic_auth("sk_test_bench", Some(""))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok(OwnLocalstripe {
                    url,
                    request_log,
                    _child: child,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("localstripe did not start")
    }
}

impl OwnLocalstripe {
    /// How many Stripe API requests the fake has received so far.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.request_log)
            .map(|log| log.lines().count())
            .unwrap_or(0)
    }
}

/// The `p`th percentile (0 to 100) of `samples`, nearest-rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Prints one line of a benchmark's report on standard output.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
