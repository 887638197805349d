//! A short-lived, in-process memory of recently authenticated API keys, so that a busy
//! client does not pay a database round trip per request just to say who it is.
//!
//! Entries are keyed by the secret's SHA-256 (the secret itself is never kept) and live
//! for a few seconds. Revoking a key through this process forgets it at once; another
//! instance of the service notices within the time to live. Unknown keys are never
//! remembered, so a key created a moment ago works at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use saas_core::{ApiKeyId, TenantId};
use tenancy::api_keys::KeyOwner;

/// Beyond this many entries the cache starts over rather than grow without bound.
const MAX_ENTRIES: usize = 100_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (KeyOwner, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, digest: &[u8]) -> Option<KeyOwner> {
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
            .map(|(owner, _)| *owner)
    }

    pub fn insert(&self, digest: Vec<u8>, owner: KeyOwner) {
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
        entries.insert(digest, (owner, Instant::now()));
    }

    pub fn forget_key(&self, key: ApiKeyId) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, (owner, _)| owner.key_id != key);
    }

    /// Forgets every key of a tenant (all revoked, or its state changed).
    pub fn forget_tenant(&self, tenant: TenantId) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, (owner, _)| owner.tenant_id != tenant);
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
        cache.insert(vec![1], a);
        cache.insert(vec![2], b);
        assert_eq!(cache.get(&[1]), Some(a));
        cache.forget_key(a.key_id);
        assert_eq!(cache.get(&[1]), None);
        cache.forget_tenant(b.tenant_id);
        assert_eq!(cache.get(&[2]), None);
        cache.insert(vec![3], a);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&[3]), None);
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let cache = KeyCache::new(Duration::ZERO);
        cache.insert(vec![1], owner());
        assert_eq!(cache.get(&[1]), None);
    }
}
