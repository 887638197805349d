//! The simulator's only way into the deployment: its public HTTP API. Every request is
//! timed per endpoint, and every 5xx is counted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Api {
    base: String,
    client: reqwest::Client,
    operator_token: String,
    stats: Mutex<BTreeMap<&'static str, EndpointStats>>,
}

#[derive(Default, Clone)]
pub struct EndpointStats {
    pub latencies: Vec<Duration>,
    /// When each 5xx was answered, and its status.
    pub server_errors: Vec<(Instant, u16)>,
    /// Requests that got no answer (connection refused or cut).
    pub unanswered: u64,
}

/// An answer: its status and its body (JSON, or `Null` when there is none).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// Who a request is made as.
#[derive(Clone, Copy)]
pub enum As<'a> {
    Anyone,
    Key(&'a str),
    Operator,
}

impl Api {
    pub fn new(base: String, operator_token: String) -> Self {
        Self {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("an HTTP client"),
            operator_token,
            stats: Mutex::default(),
        }
    }

    /// Sends one request; `endpoint` names it in the report (a route template).
    pub async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        who: As<'_>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        self.send(endpoint, method, path, who, body, None).await
    }

    /// Sends a write with an `Idempotency-Key` until the service answers it (not a 5xx,
    /// not a broken connection), as a client that must know whether it happened does;
    /// gives up after a minute.
    pub async fn call_idempotent(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        who: As<'_>,
        body: &Value,
    ) -> anyhow::Result<Answer> {
        let key = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self
                .send(endpoint, method.clone(), path, who, Some(body), Some(&key))
                .await;
            match answer {
                Ok(answer) if !answer.status.is_server_error() => return Ok(answer),
                _ if Instant::now() > deadline => anyhow::bail!("{endpoint}: no answer in 60 s"),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        who: As<'_>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request = match who {
            As::Anyone => request,
            As::Key(key) => request.bearer_auth(key),
            As::Operator => request.bearer_auth(&self.operator_token),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let answered = async {
            let response = request.send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        }
        .await;
        let took = started.elapsed();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let entry = stats.entry(endpoint).or_default();
        let (status, text) = match answered {
            Ok(answered) => answered,
            Err(error) => {
                entry.unanswered += 1;
                return Err(error.into());
            }
        };
        entry.latencies.push(took);
        if status.is_server_error() {
            entry.server_errors.push((Instant::now(), status.as_u16()));
        }
        drop(stats);
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer { status, body })
    }

    pub fn stats(&self) -> BTreeMap<&'static str, EndpointStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One request; a 5xx or no answer at all (a fault in force) is [`Busy`].
    pub async fn answered(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        who: As<'_>,
        body: Option<&Value>,
    ) -> Result<Answer, Busy> {
        self.call(endpoint, method, path, who, body)
            .await
            .ok()
            .filter(|answer| !answer.status.is_server_error())
            .ok_or(Busy)
    }

    /// A GET of a fixed route with the tenant's key; `endpoint` is "GET <path>".
    pub async fn get(&self, endpoint: &'static str, key: &str) -> Result<Answer, Busy> {
        let path = endpoint.trim_start_matches("GET ");
        self.answered(endpoint, Method::GET, path, As::Key(key), None)
            .await
    }

    /// The tenant as the operator's view shows it.
    pub async fn operator_view(&self, tenant_id: &str) -> Result<Answer, Busy> {
        let path = format!("/v1/admin/tenants/{tenant_id}");
        self.answered(
            "GET /v1/admin/tenants/{id}",
            Method::GET,
            &path,
            As::Operator,
            None,
        )
        .await
    }

    /// The tenant's state as the operator's view shows it, when the service answers.
    pub async fn operator_sees(&self, tenant_id: &str) -> Option<String> {
        let seen = self.operator_view(tenant_id).await.ok()?;
        seen.body["state"].as_str().map(str::to_owned)
    }
}

/// The service turned a change down (another transition running) or could not be
/// reached (a fault): the change is skipped.
pub struct Busy;

/// Sends a request until the service answers it (a fault may be in force), for up to a
/// minute.
pub async fn until_answered<F, Fut>(send: F) -> Result<Answer, Busy>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Answer, Busy>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send().await {
            Ok(answer) => return Ok(answer),
            Err(Busy) if Instant::now() > deadline => return Err(Busy),
            Err(Busy) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
