//! Secrets a signup must be able to show again (its token to a retried request, its first
//! API key to a repeated read) without the store holding anything usable: each is
//! encrypted under a key derived from something only the signer-up holds.
//!
//! ChaCha20-Poly1305 with a random nonce, keyed by HKDF-SHA256 of that material and a
//! purpose label, so one secret can never be opened as another.

use chacha20poly1305::aead::{Aead, Nonce};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand::RngCore;

const NONCE_LEN: usize = 12;

fn cipher(key_material: &[u8], purpose: &str) -> ChaCha20Poly1305 {
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, key_material)
        .expand(purpose.as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    ChaCha20Poly1305::new_from_slice(&key).expect("the key is 32 bytes")
}

/// `plaintext` encrypted under `key_material` for `purpose`: nonce, then ciphertext.
pub fn seal(key_material: &[u8], purpose: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher(key_material, purpose)
        .encrypt(&Nonce::<ChaCha20Poly1305>::from(nonce), plaintext)
        .expect("encryption in memory cannot fail");
    [nonce.as_slice(), &sealed].concat()
}

/// The plaintext, if `sealed` was sealed under the same material and purpose.
pub fn open(key_material: &[u8], purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::<ChaCha20Poly1305>::try_from(nonce).ok()?;
    cipher(key_material, purpose)
        .decrypt(&nonce, ciphertext)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_material_and_purpose_open_it() {
        let sealed = seal(b"st_token", "first api key", b"sk_secret");
        assert!(!sealed.windows(9).any(|w| w == b"sk_secret"));
        assert_eq!(
            open(b"st_token", "first api key", &sealed).as_deref(),
            Some(b"sk_secret".as_slice())
        );
        assert_eq!(open(b"st_tokem", "first api key", &sealed), None);
        assert_eq!(open(b"st_token", "signup token", &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(b"st_token", "first api key", &tampered), None);
        assert_eq!(open(b"st_token", "first api key", &sealed[..5]), None);
        assert_ne!(seal(b"st_token", "first api key", b"sk_secret"), sealed);
    }
}
