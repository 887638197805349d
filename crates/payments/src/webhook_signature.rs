//! Stripe's webhook signature scheme (https://docs.stripe.com/webhooks#verify-manually):
//! `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">[,v1=...]`.
//!
//! The check runs before anything is known about the caller, so it is bounded: the
//! header's size and its number of signatures are capped, the timestamp is checked
//! first, the body is hashed once whatever the number of signatures, and each
//! comparison takes constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Stripe's own default: events signed more than five minutes ago are refused.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// Far above what Stripe sends (one `t`, a `v1` per active secret, a `v0` in test mode).
const MAX_HEADER_BYTES: usize = 1024;
/// Stripe signs with each secret that is active while one is rolled: a few at most.
const MAX_SIGNATURES: usize = 8;
const SIGNATURE_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing or malformed")]
    Malformed,
    #[error("no signature matches the body")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance")]
    Expired,
}

/// Checks `header` (the `Stripe-Signature` value) against the raw `body`. Any of several
/// `v1` signatures may match (Stripe sends one per active secret while one is rolled).
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<[u8; SIGNATURE_BYTES]> = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse().map_err(|_| SignatureError::Malformed)?),
            "v1" => {
                if signatures.len() == MAX_SIGNATURES {
                    return Err(SignatureError::Malformed);
                }
                let mut signature = [0u8; SIGNATURE_BYTES];
                hex::decode_to_slice(value, &mut signature)
                    .map_err(|_| SignatureError::Malformed)?;
                signatures.push(signature);
            }
            _ => {} // v0 (test-mode legacy) and future schemes
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Expired);
    }
    let expected = mac(body, secret, timestamp);
    let matched = signatures.iter().fold(0u8, |any, signature| {
        any | signature.ct_eq(&expected).unwrap_u8()
    });
    if matched == 1 {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The signature header Stripe would send for `body` at `timestamp` (for tests and tools).
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(body, secret, timestamp))
    )
}

fn mac(body: &[u8], secret: &str, timestamp: i64) -> [u8; SIGNATURE_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, SECRET, 1_700_000_000);
        assert_eq!(verify(&header, body, SECRET, 1_700_000_100, 300), Ok(()));
    }

    #[test]
    fn a_changed_body_or_another_secret_fails() {
        let header = sign(b"{}", SECRET, 1_700_000_000);
        assert_eq!(
            verify(&header, b"{ }", SECRET, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, b"{}", "whsec_other", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_or_future_timestamps_fail_even_when_signed() {
        let header = sign(b"{}", SECRET, 1_700_000_000);
        assert_eq!(
            verify(&header, b"{}", SECRET, 1_700_000_301, 300),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&header, b"{}", SECRET, 1_699_999_699, 300),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = sign(b"{}", SECRET, 1_700_000_000);
        let v1 = good.split_once("v1=").unwrap().1;
        let header = format!("t=1700000000,v1={},v1={v1},v0=abc", "00".repeat(32));
        assert_eq!(verify(&header, b"{}", SECRET, 1_700_000_000, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify(header, b"{}", SECRET, 1, 300),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_timestamp_is_checked_before_any_hashing() {
        // Signed with another secret and far too old: refused as expired, never hashed.
        let header = sign(b"{}", "whsec_other", 1_600_000_000);
        assert_eq!(
            verify(&header, b"{}", SECRET, 1_700_000_000, 300),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn headers_too_long_or_with_too_many_signatures_are_refused_unhashed() {
        let good = sign(b"{}", SECRET, 1_700_000_000);
        let many = format!("{good}{}", ",v1=".repeat(MAX_SIGNATURES));
        assert_eq!(
            verify(&many, b"{}", SECRET, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        let long = format!("{good},v0={}", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            verify(&long, b"{}", SECRET, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        // Empty entries are malformed, not work.
        let empty = format!("t=1700000000{}", ",v1=".repeat(4));
        assert_eq!(
            verify(&empty, b"{}", SECRET, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
    }
}
