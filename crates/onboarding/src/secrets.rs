//! The two secrets a signup hands out, kept so that the store alone cannot use them:
//!
//! - **The first API key** is made when the signup is accepted, while its token is at
//!   hand: the store gets the key's hash (the provisioning job creates the key from it)
//!   and the key sealed under the signup token, which only the signer-up holds. A read
//!   with the token opens it; reads within [`FIRST_KEY_WINDOW_SECS`] of the first one see it
//!   again (a lost response is not a lost key), and the first read after that erases it.
//! - **The signup token**, for a request retried under the same `Idempotency-Key`, is
//!   sealed under that key and the client's address. The key's scope is the same pair,
//!   so the same key from another address is another request and never receives the
//!   token; the store keeps only a digest of the pair.

use std::net::IpAddr;

use saas_core::SignupId;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use tenancy::StoreError;
use tenancy::api_keys::PreparedSecret;

use crate::{sealed, store};

/// How long after its first read the first API key can be read again.
pub const FIRST_KEY_WINDOW_SECS: i64 = 600;
/// How long a signup's `Idempotency-Key` is remembered (as Stripe keeps its keys).
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

const FIRST_KEY_PURPOSE: &str = "signup first api key v1";
const TOKEN_PURPOSE: &str = "signup token replay v1";

/// A signup's first API key, made at acceptance.
pub struct FirstKey {
    pub hash: Vec<u8>,
    pub display_prefix: String,
    /// The secret, sealed under the signup token.
    pub sealed: Vec<u8>,
}

impl FirstKey {
    pub fn new(signup_token: &str) -> Self {
        let secret = PreparedSecret::generate();
        Self {
            hash: secret.hash(),
            display_prefix: secret.display_prefix().to_owned(),
            sealed: sealed::seal(
                signup_token.as_bytes(),
                FIRST_KEY_PURPOSE,
                secret.secret.as_bytes(),
            ),
        }
    }
}

/// The first API key, if `sealed` was sealed under `signup_token`.
pub fn open_first_key(signup_token: &str, sealed: &[u8]) -> Option<String> {
    sealed::open(signup_token.as_bytes(), FIRST_KEY_PURPOSE, sealed)
        .and_then(|plain| String::from_utf8(plain).ok())
}

/// An `Idempotency-Key` as seen from one client address.
pub struct IdempotencyScope {
    material: Vec<u8>,
}

impl IdempotencyScope {
    pub fn new(client: IpAddr, key: &str) -> Self {
        Self {
            material: format!("{client}\n{key}").into_bytes(),
        }
    }

    /// What the store keeps to find a retry: a digest, not the key.
    pub fn digest(&self) -> Vec<u8> {
        Sha256::new()
            .chain_update(b"signup idempotency v1\n")
            .chain_update(&self.material)
            .finalize()
            .to_vec()
    }

    pub fn seal_token(&self, signup_token: &str) -> Vec<u8> {
        sealed::seal(&self.material, TOKEN_PURPOSE, signup_token.as_bytes())
    }

    pub fn open_token(&self, sealed: &[u8]) -> Option<String> {
        sealed::open(&self.material, TOKEN_PURPOSE, sealed)
            .and_then(|plain| String::from_utf8(plain).ok())
    }
}

/// The first API key, for a read of a completed signup with its `signup_token`.
///
/// A `HEAD` (`look_only`) neither starts the window nor ends it. A signup accepted before
/// keys were sealed still holds its key in plaintext: it is handed out once, as then.
pub async fn first_key_for_read(
    conn: &mut PgConnection,
    id: SignupId,
    signup_token: &str,
    look_only: bool,
) -> Result<Option<String>, StoreError> {
    let Some((sealed, shown, expired)) = store::sealed_first_key(conn, id).await? else {
        return if look_only {
            Ok(None)
        } else {
            store::take_api_key(conn, id).await
        };
    };
    if look_only {
        return Ok(None);
    }
    if expired {
        store::erase_first_key(conn, id).await?;
        return Ok(None);
    }
    if !shown {
        store::mark_first_key_shown(conn, id).await?;
    }
    Ok(open_first_key(signup_token, &sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_key_opens_with_its_token_only_and_matches_its_hash() {
        let key = FirstKey::new("st_a");
        let secret = open_first_key("st_a", &key.sealed).unwrap();
        assert_eq!(tenancy::api_keys::hash_secret(&secret), key.hash);
        assert!(secret.starts_with(&key.display_prefix));
        assert_eq!(open_first_key("st_b", &key.sealed), None);
    }

    #[test]
    fn the_same_key_from_another_address_is_another_scope() {
        let here = IdempotencyScope::new("127.0.0.1".parse().unwrap(), "k-1");
        let there = IdempotencyScope::new("127.0.0.2".parse().unwrap(), "k-1");
        assert_ne!(here.digest(), there.digest());
        let sealed = here.seal_token("st_x");
        assert_eq!(here.open_token(&sealed).as_deref(), Some("st_x"));
        assert_eq!(there.open_token(&sealed), None);
    }
}
