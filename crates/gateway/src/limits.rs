//! Limits that protect this process from one tenant: writes that change access or money,
//! and requests of one kind running at once. They count in this process; limits per
//! client address, which every replica shares, are in [`crate::client_limits`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use saas_core::TenantId;

use crate::error::ApiError;

/// Sensitive writes (API keys, plan changes, exports, payment methods) per tenant. Each
/// is audited, and the audit log is append-only: a tenant looping them would otherwise
/// grow it without bound.
pub struct TenantWriteLimiter(governor::DefaultKeyedRateLimiter<TenantId>);

impl TenantWriteLimiter {
    pub fn per_minute(limit: NonZeroU32) -> Self {
        Self(governor::RateLimiter::keyed(governor::Quota::per_minute(
            limit,
        )))
    }

    /// Takes one write from `tenant`'s allowance, or answers 429 with when to retry.
    pub fn check(&self, tenant: TenantId) -> Result<(), ApiError> {
        self.0.check_key(&tenant).map_err(|not_until| {
            rate_limited(
                &not_until,
                "too many changes of this kind for this tenant; retry later",
            )
        })
    }
}

/// 429 `rate_limited`, with `Retry-After` when the limiter allows the next request.
pub fn rate_limited(
    not_until: &governor::NotUntil<governor::clock::QuantaInstant>,
    message: &'static str,
) -> ApiError {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    rate_limited_for(wait, message)
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least one).
pub fn rate_limited_for(wait: std::time::Duration, message: &'static str) -> ApiError {
    ApiError::too_many_requests("rate_limited", message, wait.as_secs().max(1))
}

/// Requests of one kind running per tenant in this process, at most `cap` at once. A
/// request past the cap is refused at once, before it takes anything, with the kind's
/// 429.
pub struct TenantSlots {
    cap: u32,
    running: Arc<Mutex<HashMap<TenantId, u32>>>,
    refusal: fn() -> ApiError,
}

/// A running request's hold on one of its tenant's slots, released when dropped (for a
/// streamed response, when its body ends, however it ends).
pub struct TenantSlot {
    running: Arc<Mutex<HashMap<TenantId, u32>>>,
    tenant: TenantId,
}

impl TenantSlots {
    /// Exports: one per tenant at a time. Each holds a ClickHouse query open and reads
    /// the ledger for as long as its client takes to download it.
    pub fn exports() -> Self {
        Self::new(NonZeroU32::MIN, || {
            ApiError::too_many_requests(
                "export_in_progress",
                "an export of this tenant is running; retry when it has finished",
                5,
            )
        })
    }

    /// Usage batches: `cap` per tenant at a time. Batches of one tenant queue on its
    /// counter rows, each holding a pooled connection meanwhile; without a cap, a tenant
    /// sending hundreds at once would take the whole pool, and every other tenant would
    /// wait for a connection and then get 503.
    pub fn ingest(cap: NonZeroU32) -> Self {
        Self::new(cap, || {
            ApiError::too_many_requests(
                "rate_limited",
                "too many batches of this tenant are being metered at once; nothing of \
                 this one was metered, send it again",
                1,
            )
        })
    }

    fn new(cap: NonZeroU32, refusal: fn() -> ApiError) -> Self {
        Self {
            cap: cap.get(),
            running: Arc::default(),
            refusal,
        }
    }

    /// One of the tenant's slots, or the kind's 429 while all are taken.
    pub fn take(&self, tenant: TenantId) -> Result<TenantSlot, ApiError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let count = running.entry(tenant).or_default();
        if *count >= self.cap {
            return Err((self.refusal)());
        }
        *count += 1;
        Ok(TenantSlot {
            running: self.running.clone(),
            tenant,
        })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = running.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn one_export_per_tenant_at_a_time() {
        let slots = TenantSlots::exports();
        let (a, b) = (TenantId::new(), TenantId::new());
        let held = slots.take(a).unwrap();
        assert_eq!(
            slots.take(a).err().map(|e| e.status),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        assert!(slots.take(b).is_ok());
        drop(held);
        assert!(slots.take(a).is_ok());
    }

    #[test]
    fn a_tenant_takes_at_most_its_cap_of_ingest_slots_and_frees_them() {
        let slots = TenantSlots::ingest(NonZeroU32::new(2).unwrap());
        let (a, b) = (TenantId::new(), TenantId::new());
        let first = slots.take(a).unwrap();
        let second = slots.take(a).unwrap();
        let refused = slots.take(a).err().expect("a third is refused");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "rate_limited");
        assert_eq!(refused.retry_after_secs, Some(1));
        assert!(slots.take(b).is_ok(), "another tenant has slots of its own");
        drop(first);
        let third = slots.take(a).unwrap();
        drop((second, third));
        assert!(
            slots.running.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn each_tenant_has_its_own_allowance() {
        let limiter = TenantWriteLimiter::per_minute(NonZeroU32::new(2).unwrap());
        let (a, b) = (TenantId::new(), TenantId::new());
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let refused = limiter.check(a).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after_secs.is_some());
        assert!(limiter.check(b).is_ok());
    }
}
