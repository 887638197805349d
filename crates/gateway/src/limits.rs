//! Rate limits that protect the service from one caller: writes that change access or
//! money, per tenant, and failed operator tokens, per client address.
//!
//! Both live in this process. With several replicas each counts on its own (the replicas
//! work moves them into Postgres).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
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
    ApiError::too_many_requests("rate_limited", message, wait.as_secs())
}

/// Beyond this many client addresses the failure table starts over rather than grow.
const MAX_ADDRESSES: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

/// Failed attempts per client address in a fixed window. Once an address has used its
/// allowance it is refused before its guess is even compared, so that a correct guess
/// and a wrong one answer alike until the window ends. Successes cost nothing: an
/// operator's scripts are never slowed down by this.
pub struct FailureLimiter {
    limit: u32,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    pub fn per_minute(limit: NonZeroU32) -> Self {
        Self {
            limit: limit.get(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long `address` must wait, if it has no attempts left.
    pub fn blocked_for(&self, address: IpAddr) -> Option<Duration> {
        let failures = self.lock();
        let (count, started) = failures.get(&address)?;
        let elapsed = started.elapsed();
        (*count >= self.limit && elapsed < WINDOW).then(|| WINDOW - elapsed)
    }

    pub fn record_failure(&self, address: IpAddr) {
        let mut failures = self.lock();
        if failures.len() >= MAX_ADDRESSES {
            failures.retain(|_, (_, started)| started.elapsed() < WINDOW);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(address).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Exports running, per tenant: one at a time. Each holds a ClickHouse query open and
/// reads the ledger for as long as its client takes to download it.
#[derive(Default)]
pub struct ExportSlots(std::sync::Arc<Mutex<std::collections::HashSet<TenantId>>>);

/// A running export's hold on its tenant's slot, released when dropped (when its
/// response body ends, however it ends).
pub struct ExportSlot {
    slots: std::sync::Arc<Mutex<std::collections::HashSet<TenantId>>>,
    tenant: TenantId,
}

impl ExportSlots {
    /// The tenant's slot, or 429 while another export of it runs.
    pub fn take(&self, tenant: TenantId) -> Result<ExportSlot, ApiError> {
        let mut running = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(tenant) {
            return Err(ApiError::too_many_requests(
                "export_in_progress",
                "an export of this tenant is running; retry when it has finished",
                5,
            ));
        }
        Ok(ExportSlot {
            slots: self.0.clone(),
            tenant,
        })
    }
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tenant);
    }
}

/// The address of the connection's peer, when the server recorded it.
pub fn peer_address(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_and_others_are_not() {
        let limiter = FailureLimiter::per_minute(NonZeroU32::new(3).unwrap());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.blocked_for(a), None);
            limiter.record_failure(a);
        }
        let wait = limiter
            .blocked_for(a)
            .expect("blocked after three failures");
        assert!(wait <= WINDOW && wait > Duration::from_secs(50), "{wait:?}");
        assert_eq!(limiter.blocked_for(b), None);
    }

    #[test]
    fn one_export_per_tenant_at_a_time() {
        let slots = ExportSlots::default();
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
