//! Who the client is, for limits and idempotency scopes: the connection's peer, unless
//! the peer is a proxy we were told to trust, in which case the address it forwarded.
//!
//! Behind trusted proxies, `X-Forwarded-For` is read from the right: each trusted proxy
//! appends the address it received the request from, so the rightmost address that is
//! not itself a trusted proxy is the client; anything to its left was written by the
//! client and proves nothing. `Forwarded` (RFC 7239) is read the same way, its `for=`
//! parameters in order. A header that does not parse leaves the peer as the client.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::error::ApiError;
use crate::state::AppState;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated addresses (`10.0.0.7`) and blocks (`10.0.0.0/8`); empty: none.
    fn from_str(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("not an address or CIDR block: {item:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

/// An IPv4 address mapped into IPv6 is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request whose connection came from `peer`.
pub fn client_of(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.trusts(peer) {
        return peer;
    }
    let Some(chain) = forwarded_chain(headers) else {
        return peer;
    };
    // From the nearest hop outwards: the first address no trusted proxy accounts for.
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        client = canonical(hop);
        if !trusted.trusts(client) {
            break;
        }
    }
    client
}

/// The addresses the proxies forwarded, client first; `None` when there are none or
/// any does not parse.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .map(|value| value.to_str().ok())
        .collect::<Option<_>>()?;
    let chain: Vec<IpAddr> = if forwarded.is_empty() {
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|value| value.to_str().ok())
            .collect::<Option<_>>()?;
        values
            .iter()
            .flat_map(|value| value.split(','))
            .map(|item| parse_node(item.trim()))
            .collect::<Option<_>>()?
    } else {
        forwarded
            .iter()
            .flat_map(|value| value.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.eq_ignore_ascii_case("for").then_some(value)
                })
            })
            .map(|value| parse_node(value.trim().trim_matches('"')))
            .collect::<Option<_>>()?
    };
    (!chain.is_empty()).then_some(chain)
}

/// An address as proxies write it: bare, with a port, or as `[v6]` or `[v6]:port`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(inner, _)| inner.parse().ok())
}

/// The request's client address, as an extractor.
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        client_address(parts, state)
            .map(ClientAddress)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no peer address recorded")))
    }
}

/// The client of `parts`, when the server recorded the peer.
pub fn client_address(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(client_of(
        peer,
        &parts.headers,
        &state.config.http.trusted_proxies,
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let forged = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(
            client_of(ip("203.0.113.9"), &forged, &trusted),
            ip("203.0.113.9")
        );
        let none = TrustedProxies::default();
        assert_eq!(client_of(ip("10.0.0.1"), &forged, &none), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_is_the_client() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.10".parse().unwrap();
        // The client wrote the first entry itself; the proxies appended the rest.
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 192.168.1.10")]);
        assert_eq!(
            client_of(ip("10.1.2.3"), &chain, &trusted),
            ip("203.0.113.9")
        );
        let split = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5:4711"),
        ]);
        assert_eq!(
            client_of(ip("10.1.2.3"), &split, &trusted),
            ip("203.0.113.9")
        );
        // All of them proxies: the farthest is the best we know.
        let inside = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.5")]);
        assert_eq!(client_of(ip("10.1.2.3"), &inside, &trusted), ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_is_read_like_x_forwarded_for_and_wins_over_it() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let both = headers(&[
            (
                "forwarded",
                "for=198.51.100.1, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "198.51.100.99"),
        ]);
        assert_eq!(
            client_of(ip("10.0.0.2"), &both, &trusted),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn a_header_that_does_not_parse_leaves_the_peer() {
        let trusted: TrustedProxies = "127.0.0.1".parse().unwrap();
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, not-an-address")]);
        assert_eq!(
            client_of(ip("127.0.0.1"), &garbage, &trusted),
            ip("127.0.0.1")
        );
        let mapped = client_of(
            ip("::ffff:127.0.0.1"),
            &headers(&[("x-forwarded-for", "203.0.113.9")]),
            &trusted,
        );
        assert_eq!(mapped, ip("203.0.113.9"), "v4-mapped peers are v4");
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_blocks_and_refuse_the_rest() {
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
        assert!("10.0.0.0/8, ::1".parse::<TrustedProxies>().is_ok());
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.internal".parse::<TrustedProxies>().is_err());
    }
}
