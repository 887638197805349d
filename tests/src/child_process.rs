//! The real `saas` binary as a child process, for tests that must kill it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::TestApp;
use crate::stack::Stack;

/// Path of the `saas` binary, built on first use if the test run did not build it.
pub fn saas_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let binary = target.join("debug").join("saas");
    if !binary.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", "saas"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin saas failed");
    }
    binary
}

/// A `saas serve` process on a fixed port, pointed at `app`'s database.
pub struct ServiceProcess {
    pub port: u16,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl ServiceProcess {
    pub async fn start(app: &TestApp) -> ServiceProcess {
        Self::start_with(app, &[]).await
    }

    /// Starts it with `settings` (`SAAS_*` variables) over the usual ones.
    pub async fn start_with(app: &TestApp, settings: &[(&str, &str)]) -> ServiceProcess {
        let stack = Stack::from_env();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env: Vec<(String, String)> = vec![
            ("SAAS_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "SAAS_DATABASE__URL".into(),
                stack.app_url(&app.database_name),
            ),
            (
                "SAAS_DATABASE__MIGRATION_URL".into(),
                stack.owner_url(&app.database_name),
            ),
            ("SAAS_MIGRATE_ON_START".into(), "false".into()),
            ("SAAS_CLICKHOUSE__URL".into(), stack.clickhouse_url.clone()),
            (
                "SAAS_CLICKHOUSE__DATABASE".into(),
                crate::stack::CLICKHOUSE_TEST_DATABASE.into(),
            ),
            (
                "SAAS_CLICKHOUSE__USER".into(),
                crate::stack::CLICKHOUSE_SERVICE_USER.into(),
            ),
            (
                "SAAS_CLICKHOUSE__PASSWORD".into(),
                crate::stack::CLICKHOUSE_SERVICE_PASSWORD.into(),
            ),
            ("SAAS_LOG__FILTER".into(), "error".into()),
            ("SAAS_WORKERS__RELAY_IDLE_MS".into(), "20".into()),
            // Tests run the readiness checks when they ask for them.
            ("SAAS_READINESS__RUN_INTERVAL_MS".into(), "0".into()),
            // No DNS query leaves the machine.
            ("SAAS_WEBHOOKS__SYSTEM_DNS".into(), "false".into()),
        ]
        .into_iter()
        .chain(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .collect();
        let mut process = ServiceProcess {
            port,
            child: None,
            env,
        };
        process.restart().await;
        process
    }

    /// Starts the process (again) and waits until it answers /healthz.
    pub async fn restart(&mut self) {
        let child = Command::new(saas_binary())
            .arg("serve")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start saas");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let url = format!("http://127.0.0.1:{}/healthz", self.port);
            if client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("saas did not start");
    }

    /// SIGKILL: no drain, no cleanup, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL");
        }
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the process, as `kill -<signal>` would.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("a running process");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
