//! HTTPS to ClickHouse servers whose certificates a private CA signed. (`https` URLs
//! work without this, against the system's roots.)

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// As the ClickHouse client's own HTTP client: keep-alive probes, and idle connections
/// closed before the server's 3 s keep-alive timeout closes them under a request.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `pem` holds a certificate a TLS client can trust (for configuration checks).
pub fn check_ca(pem: &[u8]) -> Result<(), native_tls::Error> {
    native_tls::Certificate::from_pem(pem).map(|_| ())
}

/// An HTTP(S) client for the ClickHouse client that trusts the CA in `pem` besides the
/// system's roots, verifying certificates and host names as always.
pub(crate) fn http_client_trusting<B>(
    pem: &[u8],
) -> Result<Client<hyper_tls::HttpsConnector<HttpConnector>, B>, native_tls::Error>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let tls = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(pem)?)
        .build()?;
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    let https = hyper_tls::HttpsConnector::from((http, tls.into()));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https))
}
