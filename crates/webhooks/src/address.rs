//! Where the sender may connect. A tenant chooses the URL, so without a policy the
//! service would make requests into its own network on the tenant's behalf (cloud
//! metadata, databases, admin ports). By default only https URLs, and only public
//! addresses: the URL's host when it is an address, and every address a name resolves
//! to, at creation and again at each delivery (see [`crate::sender`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// What the sender allows. The defaults are for production; local work (a receiver on
/// the same machine) turns both on by configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Plain `http://` URLs.
    pub allow_http: bool,
    /// Loopback, private, link-local (metadata), shared and other non-public addresses.
    pub allow_private: bool,
}

/// Why a URL or an address is refused; `code` is the API's stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

impl Refused {
    fn url(message: impl Into<String>) -> Self {
        Self {
            code: "invalid_webhook_url",
            message: message.into(),
        }
    }

    pub(crate) fn address(ip: IpAddr) -> Self {
        Self {
            code: "webhook_url_forbidden",
            message: format!("webhooks are not sent to non-public addresses such as {ip}"),
        }
    }
}

impl AddressPolicy {
    /// Parses `raw` and checks what can be checked without resolving it: the scheme, no
    /// credentials, a host, and the host itself when it is an address.
    pub fn check_url(&self, raw: &str) -> Result<Url, Refused> {
        let url = Url::parse(raw).map_err(|error| Refused::url(format!("not a URL: {error}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(Refused::url("the URL must use https")),
            other => return Err(Refused::url(format!("unsupported scheme {other:?}"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::url("the URL must not carry credentials"));
        }
        if url.fragment().is_some() {
            return Err(Refused::url("the URL must not have a fragment"));
        }
        match url.host() {
            None => return Err(Refused::url("the URL has no host")),
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(Host::Domain(_)) => {}
        }
        Ok(url)
    }

    /// Whether the sender may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(Refused::address(ip))
        }
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, shared (CGNAT),
/// link-local (where cloud metadata answers), unspecified, broadcast, multicast,
/// documentation or reserved; IPv4 inside IPv6 (mapped, compatible, NAT64) is judged
/// as the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(v4()),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(v4()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(v4()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: AddressPolicy, url: &str) -> &'static str {
        policy.check_url(url).expect_err(url).code
    }

    #[test]
    fn refuses_every_kind_of_non_public_address() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip} counted as public");
            assert!(AddressPolicy::default().check_ip(ip).is_err());
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as not public");
        }
    }

    #[test]
    fn checks_the_url_before_any_lookup() {
        let policy = AddressPolicy::default();
        assert_eq!(
            refused(policy, "https://127.0.0.1/hook"),
            "webhook_url_forbidden"
        );
        assert_eq!(
            refused(policy, "https://10.1.2.3:8443/x"),
            "webhook_url_forbidden"
        );
        assert_eq!(
            refused(policy, "https://169.254.169.254/latest/meta-data/"),
            "webhook_url_forbidden"
        );
        assert_eq!(
            refused(policy, "https://[::1]/hook"),
            "webhook_url_forbidden"
        );
        assert_eq!(
            refused(policy, "https://[::ffff:7f00:1]/"),
            "webhook_url_forbidden"
        );
        // Spellings of loopback that URL parsing normalises.
        assert_eq!(
            refused(policy, "https://2130706433/"),
            "webhook_url_forbidden"
        );
        assert_eq!(refused(policy, "https://0x7f.1/"), "webhook_url_forbidden");
        assert_eq!(
            refused(policy, "http://example.com/"),
            "invalid_webhook_url"
        );
        assert_eq!(refused(policy, "ftp://example.com/"), "invalid_webhook_url");
        assert_eq!(
            refused(policy, "https://u:p@example.com/"),
            "invalid_webhook_url"
        );
        assert_eq!(refused(policy, "not a url"), "invalid_webhook_url");
        assert!(policy.check_url("https://hooks.example.com/in?x=1").is_ok());

        let local = AddressPolicy {
            allow_http: true,
            allow_private: true,
        };
        assert!(local.check_url("http://127.0.0.1:9000/hook").is_ok());
    }
}
