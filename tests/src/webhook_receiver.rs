//! A tenant's webhook receiver, as a tenant would write one: `scripts/webhook_receiver.py`,
//! which verifies each delivery with the official Standard Webhooks library. It listens
//! on 127.0.0.1 only and ends with the test.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct WebhookReceiver {
    port: u16,
    client: reqwest::Client,
    // Dropping it closes the script's stdin (it then stops) and kills it.
    _child: Child,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/webhook_receiver.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the webhook receiver");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver prints its port")
            .expect("stdout readable")
            .expect("a port line")
            .trim()
            .parse()
            .expect("a port number");
        Self {
            port,
            client: reqwest::Client::new(),
            _child: child,
        }
    }

    /// The URL deliveries go to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Sets what the receiver verifies with and how it answers.
    pub async fn control(&self, settings: Value) {
        let status = self
            .client
            .post(format!("http://127.0.0.1:{}/control", self.port))
            .json(&settings)
            .send()
            .await
            .expect("receiver reachable")
            .status();
        assert_eq!(status, 204);
    }

    pub async fn use_secret(&self, secret: &str) {
        self.control(json!({ "secret": secret })).await;
    }

    /// Every delivery attempt so far: `verified`, `status` (what it answered),
    /// `error`, `headers`, `body`, `payload`.
    pub async fn received(&self) -> Vec<Value> {
        self.client
            .get(format!("http://127.0.0.1:{}/received", self.port))
            .send()
            .await
            .expect("receiver reachable")
            .json()
            .await
            .expect("a JSON list")
    }

    /// The attempts it acknowledged (verified, answered 204).
    pub async fn acknowledged(&self) -> Vec<Value> {
        self.received()
            .await
            .into_iter()
            .filter(|r| r["status"] == 204)
            .collect()
    }

    /// Waits until `done` holds for the attempts received, and returns them.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.received().await;
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received: {received:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts a delivery as given (a replay, a tampered copy) and returns the status the
    /// library's verification led to.
    pub async fn post_raw(&self, headers: &Value, body: &str) -> u16 {
        let mut request = self.client.post(self.url()).body(body.to_owned());
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            if let Some(value) = headers[name].as_str() {
                request = request.header(name, value);
            }
        }
        request
            .header("content-type", "application/json")
            .send()
            .await
            .expect("receiver reachable")
            .status()
            .as_u16()
    }
}
