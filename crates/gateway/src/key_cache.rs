//! A short-lived, in-process memory of recently authenticated API keys, so that a busy
//! client does not pay a database round trip per request just to say who it is.
//!
//! Entries are keyed by the secret's SHA-256 (the secret itself is never kept) and live
//! for a few seconds. Revoking a key through this process forgets it at once; another
//! instance of the service notices within the time to live.
//!
//! Unknown keys are remembered too, so that a client retrying a bad key in a loop costs
//! one lookup per time to live, not one per request. That cannot delay a new key: a
//! secret is 256 random bits, so nobody can have presented it before it was created.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use saas_core::{ApiKeyId, TenantId};
use tenancy::api_keys::KeyOwner;

/// Beyond this many entries the cache starts over rather than grow without bound.
const MAX_ENTRIES: usize = 100_000;

/// What the cache knows of a presented secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    Owner(KeyOwner),
    /// Not a live key when last asked.
    Unknown,
}

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (Cached, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, digest: &[u8]) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(digest)
            .filter(|(_, stored)| stored.elapsed() < self.ttl)
            .map(|(cached, _)| *cached)
    }

    pub fn insert(&self, digest: Vec<u8>, cached: Cached) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, stored)| stored.elapsed() < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (cached, Instant::now()));
    }

    pub fn forget_key(&self, key: ApiKeyId) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(
            |_, (cached, _)| !matches!(cached, Cached::Owner(owner) if owner.key_id == key),
        );
    }

    /// Forgets every key of a tenant (all revoked, or its state changed).
    pub fn forget_tenant(&self, tenant: TenantId) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(
            |_, (cached, _)| !matches!(cached, Cached::Owner(owner) if owner.tenant_id == tenant),
        );
    }
}

#[cfg(test)]
mod tests {
    use saas_core::TenantState;

    use super::*;

    fn owner() -> KeyOwner {
        KeyOwner {
            key_id: ApiKeyId::new(),
            tenant_id: TenantId::new(),
            tenant_state: TenantState::Active,
        }
    }

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let cache = KeyCache::new(Duration::from_millis(50));
        let (a, b) = (owner(), owner());
        cache.insert(vec![1], Cached::Owner(a));
        cache.insert(vec![2], Cached::Owner(b));
        cache.insert(vec![4], Cached::Unknown);
        assert_eq!(cache.get(&[1]), Some(Cached::Owner(a)));
        cache.forget_key(a.key_id);
        assert_eq!(cache.get(&[1]), None);
        cache.forget_tenant(b.tenant_id);
        assert_eq!(cache.get(&[2]), None);
        assert_eq!(cache.get(&[4]), Some(Cached::Unknown));
        cache.insert(vec![3], Cached::Owner(a));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&[3]), None);
        assert_eq!(cache.get(&[4]), None);
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let cache = KeyCache::new(Duration::ZERO);
        cache.insert(vec![1], Cached::Owner(owner()));
        assert_eq!(cache.get(&[1]), None);
    }
}
