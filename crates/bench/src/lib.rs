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
    // Plain, as the service connects unless told otherwise: the driver would try TLS.
    format!("postgres://{role}@127.0.0.1:{port}/{database}?sslmode=disable")
}

pub fn clickhouse_url() -> String {
    let port = std::env::var("SAAS_STACK_CH_HTTP_PORT").unwrap_or_else(|_| "8123".into());
    format!("http://127.0.0.1:{port}")
}

/// Drops and recreates `database` (Postgres and ClickHouse) and migrates both.
pub async fn fresh_database(database: &str) -> anyhow::Result<()> {
    fresh_database_on(database, &clickhouse_url()).await
}

/// [`fresh_database`] with ClickHouse at `clickhouse`.
pub async fn fresh_database_on(database: &str, clickhouse: &str) -> anyhow::Result<()> {
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
    let settings = metering::ClickHouseSettings {
        url: clickhouse.to_owned(),
        ..clickhouse_settings(database)
    };
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
        owner_user: "default".into(),
        owner_password: String::new(),
        cluster: None,
        ca_pem: None,
    }
}

/// A batch of `size` events of one token each, ids `<prefix>-<n>`, as the request body:
/// built as text, since the load generator shares the cores with the service and should
/// spend as little of them as it can.
pub fn batch_body(prefix: &str, size: usize) -> String {
    use std::fmt::Write;
    let mut body = String::with_capacity(16 + size * 64);
    body.push_str(r#"{"events":["#);
    for i in 0..size {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"id":"{prefix}-{i}","metric":"tokens","value":1}}"#
        );
    }
    body.push_str("]}");
    body
}

/// Creates active enterprise tenants (quotas far above what a benchmark sends) with a
/// key each, straight in the store.
pub async fn create_tenants(
    database: &str,
    count: usize,
) -> anyhow::Result<Vec<(saas_core::TenantId, String)>> {
    let db = tenancy::Db::from_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&pg_url(APP, database))
            .await?,
    );
    let mut tx = db.system_tx("bench setup").await?;
    let mut tenants = Vec::with_capacity(count);
    for index in 0..count {
        let id = saas_core::TenantId::new();
        let tenant = tenancy::tenants::NewTenant {
            id,
            name: format!("bench tenant {index}"),
            email: None,
            state: saas_core::TenantState::Active,
            plan_code: "enterprise".into(),
            billing_anchor: chrono::Utc::now(),
            billing_cycle: saas_core::BillingCycle::Months(1),
            synthetic: false,
            stripe_customer_id: None,
        };
        tenancy::tenants::insert(&mut tx, &tenant).await?;
        let key = tenancy::api_keys::create(&mut tx, id, "bench")
            .await?
            .secret;
        tenants.push((id, key));
    }
    tx.commit().await?;
    Ok(tenants)
}

/// `saas serve` built in the same profile as this program, as a child process.
pub struct Service {
    pub port: u16,
    pub child: Child,
    database: String,
    env: Vec<(String, String)>,
}

impl Service {
    pub async fn start(database: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = Self::spawn(database, port, &env)?;
        let service = Service {
            port,
            child,
            database: database.to_owned(),
            env,
        };
        service.wait_until_up().await?;
        Ok(service)
    }

    /// Kills the process outright (SIGKILL: no shutdown, requests in flight cut), then
    /// starts it again on the same port; returns once it answers.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        self.child = Self::spawn(&self.database, self.port, &self.env)?;
        self.wait_until_up().await
    }

    fn spawn(database: &str, port: u16, env: &[(String, String)]) -> anyhow::Result<Child> {
        let binary: PathBuf = std::env::current_exe()?.with_file_name("saas");
        if !binary.exists() {
            bail!(
                "{} not found: build it in the same profile, e.g. \
                 cargo build --release --bin saas --bin ingest-bench",
                binary.display()
            );
        }
        Ok(Command::new(binary)
            .arg("serve")
            .env("SAAS_LISTEN", format!("127.0.0.1:{port}"))
            .env("SAAS_DATABASE__URL", pg_url(APP, database))
            .env("SAAS_DATABASE__MIGRATION_URL", pg_url(OWNER, database))
            .env("SAAS_MIGRATE_ON_START", "false")
            // Webhook URLs resolve only through names given here: nothing leaves loopback.
            .env("SAAS_WEBHOOKS__SYSTEM_DNS", "false")
            .env("SAAS_CLICKHOUSE__URL", clickhouse_url())
            .env("SAAS_CLICKHOUSE__DATABASE", database)
            // Benchmarks make databases of their own, which the stack's service user
            // (limited to the service's databases) cannot reach.
            .env("SAAS_CLICKHOUSE__USER", "default")
            .env("SAAS_CLICKHOUSE__PASSWORD", "")
            .env("SAAS_LOG__FILTER", "warn")
            // A benchmark measures what it drives: no readiness runs of the scheduler's
            // own beside it.
            .env("SAAS_READINESS__RUN_INTERVAL_MS", "0")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?)
    }

    async fn wait_until_up(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if client
                .get(self.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the service did not start")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Kills the process and waits until it is gone, its Postgres connections with it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_memory_mib(&self) -> Option<f64> {
        process_memory_mib(self.child.id()?, "VmHWM:")
    }
}

/// A memory figure of process `pid` from `/proc` (`name` as `VmRSS:` or `VmHWM:`), in MiB.
pub fn process_memory_mib(pid: u32, name: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(name))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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

/// A ClickHouse server of the program's own (the one `scripts/stack.sh` installs), with
/// its data in a scratch directory, so that it can be stopped and started again without
/// touching the shared one.
pub struct OwnClickHouse {
    pub url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnClickHouse {
    pub async fn start() -> anyhow::Result<OwnClickHouse> {
        let free = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (http, tcp, https) = (free()?, free()?, free()?);
        let dir = std::env::temp_dir().join(format!("bench-clickhouse-{http}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("log"))?;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let scripts = root.join("scripts/clickhouse");
        // The stack's template: its HTTPS with the stack's certificate (made by
        // `scripts/stack.sh up`), and a cluster whose shards are both this server.
        let config = std::fs::read_to_string(scripts.join("config.xml.template"))?
            .replace("@DIR@", &dir.to_string_lossy())
            .replace("@HTTP_PORT@", &http.to_string())
            .replace("@TCP_PORT@", &tcp.to_string())
            .replace("@HTTPS_PORT@", &https.to_string())
            .replace("@TLS_DIR@", &root.join(".stack/tls").to_string_lossy())
            .replace("@SHARD1_TCP_PORT@", &tcp.to_string())
            .replace("@SHARD2_TCP_PORT@", &tcp.to_string());
        std::fs::write(dir.join("config.xml"), config)?;
        std::fs::copy(scripts.join("users.xml"), dir.join("users.xml"))?;
        let mut server = OwnClickHouse {
            url: format!("http://127.0.0.1:{http}"),
            dir,
            child: None,
        };
        server.resume().await?;
        Ok(server)
    }

    /// Kills the server (SIGKILL: as a crash or a lost machine would).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on its data; returns once it answers queries.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start clickhouse-server (scripts/stack.sh up installs it)")?;
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let answer = client
                .get(format!("{}/?query=SELECT%201", self.url))
                .send()
                .await;
            if let Ok(answer) = answer
                && answer.status() == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("ClickHouse did not start; see {}/log", self.dir.display())
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
