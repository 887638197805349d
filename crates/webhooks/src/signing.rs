//! Signatures by the Standard Webhooks specification
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>),
//! the scheme Svix uses, so that receivers verify with an off-the-shelf library:
//!
//! - the secret is `whsec_` and the base64 of 24 to 64 random bytes;
//! - the signed content is `{webhook-id}.{webhook-timestamp}.{body}`;
//! - `webhook-signature` is `v1,` and the base64 HMAC-SHA256 of it, one per secret in
//!   use, separated by spaces (both secrets sign during a rotation's overlap).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Random bytes in a secret (the specification asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A fresh signing secret, as shown to the tenant once and stored.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// The headers of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

/// Signs `body` for the message `id` at `timestamp` (seconds since the epoch) with every
/// secret in `secrets`. A secret that does not decode is skipped (the store only holds
/// ones [`new_secret`] made).
pub fn sign(id: &str, timestamp: i64, body: &str, secrets: &[&str]) -> SignedHeaders {
    let timestamp = timestamp.to_string();
    let signature = secrets
        .iter()
        .filter_map(|secret| key(secret))
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ");
    SignedHeaders {
        id: id.to_owned(),
        timestamp,
        signature,
    }
}

fn key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(PREFIX).unwrap_or(secret))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference implementations (the same one the
    /// Svix libraries test against).
    #[test]
    fn matches_the_reference_example() {
        let signed = sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        );
        assert_eq!(
            signed.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signs_with_every_secret_in_use() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let signed = sign("evt_1", 1, "{}", &[a.as_str(), b.as_str()]);
        let parts: Vec<&str> = signed.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_eq!(parts[0], sign("evt_1", 1, "{}", &[a.as_str()]).signature);
    }
}
