//! Bearer tokens we issue (API keys, session and confirmation tokens, signup tokens):
//! 256 random bits as lowercase hex after a prefix that says what they are. The store
//! keeps only their SHA-256.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Random bytes in a token.
const RANDOM_BYTES: usize = 32;

/// A fresh token: `prefix`, then 256 random bits as lowercase hex.
pub fn random(prefix: &str) -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The SHA-256 of a token: what the store keeps, and a safe key for caches.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether `token` has the shape of one made by [`random`] with `prefix`; anything else
/// can be refused without asking the store.
pub fn is_well_formed(token: &str, prefix: &str) -> bool {
    token.strip_prefix(prefix).is_some_and(|random| {
        random.len() == RANDOM_BYTES * 2
            && random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_well_formed() {
        let (a, b) = (random("ev_"), random("ev_"));
        assert_ne!(a, b);
        assert!(is_well_formed(&a, "ev_"));
        assert!(!is_well_formed(&a, "sk_"));
        assert!(!is_well_formed(&a[..a.len() - 1], "ev_"));
        assert!(!is_well_formed(&a.to_uppercase(), "EV_"));
        assert_eq!(hash(&a).len(), 32);
    }
}
