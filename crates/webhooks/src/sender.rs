//! The HTTP side of a delivery: one POST, signed, with short timeouts, no redirects
//! followed, no proxy, and only to addresses the [`AddressPolicy`] allows.
//!
//! Names are resolved by the sender's own resolver, which hands the HTTP client only
//! the addresses that pass the policy: the address connected to is one that was
//! checked, so a name that resolves to a public address when checked and to a private
//! one a moment later (DNS rebinding) is refused before any connection is made.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::address::{AddressPolicy, Refused};
use crate::signing::SignedHeaders;

/// At most this much of a receiver's answer is kept for the delivery log.
pub const RESPONSE_PREFIX_CHARS: usize = 256;

/// Turns a host name into addresses. The system's resolver in production; tests and
/// local work put names of their own in front of it ([`StaticLookup`]).
#[async_trait]
pub trait Lookup: Send + Sync + 'static {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver.
pub struct SystemLookup;

#[async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0))
            .await?
            .map(|address| address.ip())
            .collect())
    }
}

/// Fixed answers for some names (like curl's `--resolve`), and `fallback` for the rest;
/// with no fallback, other names do not resolve.
pub struct StaticLookup {
    names: HashMap<String, Vec<IpAddr>>,
    fallback: Option<Arc<dyn Lookup>>,
}

impl StaticLookup {
    /// `entries` as `name=address`, one address per entry (repeat a name for more).
    pub fn parse(entries: &[String], fallback: Option<Arc<dyn Lookup>>) -> Result<Self, String> {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for entry in entries {
            let (name, address) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not name=address"))?;
            let address: IpAddr = address
                .trim()
                .parse()
                .map_err(|_| format!("{address:?} is not an IP address"))?;
            names
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(address);
        }
        Ok(Self { names, fallback })
    }
}

#[async_trait]
impl Lookup for StaticLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if let Some(addresses) = self.names.get(&host.to_ascii_lowercase()) {
            return Ok(addresses.clone());
        }
        match &self.fallback {
            Some(fallback) => fallback.lookup(host).await,
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} is not a known name"),
            )),
        }
    }
}

/// The resolver the HTTP client uses: looks up, then keeps only allowed addresses.
struct Guarded {
    lookup: Arc<dyn Lookup>,
    policy: AddressPolicy,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let (lookup, policy, host) = (self.lookup.clone(), self.policy, name.as_str().to_owned());
        Box::pin(async move {
            let allowed = allowed_addresses(lookup.as_ref(), policy, &host).await?;
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The addresses of `host` the policy allows. Any refused address refuses the name:
/// a name that also points inward is not one to trust with the others.
async fn allowed_addresses(
    lookup: &dyn Lookup,
    policy: AddressPolicy,
    host: &str,
) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addresses = lookup.lookup(host).await?;
    if addresses.is_empty() {
        return Err(format!("{host} has no address").into());
    }
    for ip in &addresses {
        policy.check_ip(*ip)?;
    }
    Ok(addresses)
}

/// How one attempt ended when the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The first [`RESPONSE_PREFIX_CHARS`] characters of the body.
    pub body_prefix: String,
}

impl Answer {
    /// Only a 2xx acknowledges: a redirect is not followed, so it is a failure too.
    pub fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why an attempt got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The policy refused the destination; nothing was sent.
    #[error(transparent)]
    Refused(Refused),
    #[error("{0}")]
    Failed(String),
}

/// Sends deliveries. Cheap to clone; one connection pool for all endpoints.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: AddressPolicy,
    lookup: Arc<dyn Lookup>,
}

/// How long an attempt may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

impl Sender {
    pub fn new(
        policy: AddressPolicy,
        lookup: Arc<dyn Lookup>,
        timeouts: Timeouts,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Guarded {
                lookup: lookup.clone(),
                policy,
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!policy.allow_http)
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .pool_max_idle_per_host(4)
            .user_agent(concat!("saas-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("webhook HTTP client: {error}"))?;
        Ok(Self {
            client,
            policy,
            lookup,
        })
    }

    pub fn policy(&self) -> AddressPolicy {
        self.policy
    }

    /// Checks a URL a tenant gives for an endpoint: its form, and the addresses its
    /// name has now. A name that does not resolve yet is let through (the records may
    /// come later); every delivery checks again.
    pub async fn check_destination(&self, raw: &str) -> Result<Url, Refused> {
        let url = self.policy.check_url(raw)?;
        if let Some(Host::Domain(host)) = url.host()
            && let Ok(addresses) = self.lookup.lookup(host).await
        {
            for ip in addresses {
                self.policy.check_ip(ip)?;
            }
        }
        Ok(url)
    }

    /// One attempt: POSTs `body` to `url` with the signature headers.
    pub async fn send(
        &self,
        url: &str,
        headers: &SignedHeaders,
        body: &str,
    ) -> Result<Answer, SendError> {
        // An address in the URL is never given to the resolver: check it here.
        let url = self.policy.check_url(url).map_err(SendError::Refused)?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &headers.id)
            .header("webhook-timestamp", &headers.timestamp)
            .header("webhook-signature", &headers.signature)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|error| match refusal_in(&error) {
                Some(refused) => SendError::Refused(refused),
                None => SendError::Failed(describe(&error)),
            })?;
        let status = response.status().as_u16();
        Ok(Answer {
            status,
            body_prefix: read_prefix(response).await,
        })
    }
}

/// The policy's refusal, when that is what stopped the request.
fn refusal_in(error: &reqwest::Error) -> Option<Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        source = current.source();
    }
    None
}

/// The error and its causes on one line, without the URL (it may carry a token of the
/// tenant's in its query).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads at most a few KiB of the answer and keeps its first characters: a receiver
/// cannot make the service hold a large body.
async fn read_prefix(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_PREFIX_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes)
        .chars()
        .take(RESPONSE_PREFIX_CHARS)
        .collect()
}
