//! One lease per tenant around work at the payment provider that creates or charges
//! invoices: two pushes of one invoice at once would each find nothing and each create
//! it, and an invoice must not be charged twice at once.
//!
//! The lease is a row, not a lock held by an open transaction, so that its holder talks
//! to Stripe without a Postgres transaction (or a pooled connection) held meanwhile. It
//! expires on its own after [`LEASE_TTL`], so a holder that dies (a killed process)
//! blocks the tenant's collection for at most that long. A holder renews it before each
//! step at Stripe and gives a step at most [`STEP_LIMIT`], less than the TTL, so that a
//! live holder never loses it.

use std::time::Duration;

use saas_core::TenantId;
use uuid::Uuid;

use crate::{Db, StoreError};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(90);
/// The longest a holder may work between renewals.
pub const STEP_LIMIT: Duration = Duration::from_secs(60);
const _: () = assert!(STEP_LIMIT.as_secs() < LEASE_TTL.as_secs());
/// How long `acquire` waits for another holder before giving up. Short: a holder's
/// usual hold is a few Stripe calls, and a caller that gives up retries later (a job
/// with backoff) instead of keeping a job worker waiting out a dead holder's lease,
/// which would starve every other job.
const ACQUIRE_WAIT: Duration = Duration::from_secs(2);

/// A held lease; release it with [`PaymentLease::release`]. Dropped unreleased (an early
/// return on an error), it is released in the background.
#[must_use = "the lease is held until released"]
pub struct PaymentLease {
    db: Db,
    tenant: TenantId,
    holder: Uuid,
    released: bool,
}

/// Takes the tenant's payment lease, waiting for its holder up to [`ACQUIRE_WAIT`].
pub async fn acquire(db: &Db, tenant: TenantId) -> Result<PaymentLease, StoreError> {
    let holder = Uuid::new_v4();
    let deadline = tokio::time::Instant::now() + ACQUIRE_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        if take(db, tenant, holder).await? {
            return Ok(PaymentLease {
                db: db.clone(),
                tenant,
                holder,
                released: false,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Busy(format!(
                "the payment lease of {tenant} is held elsewhere"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Takes the lease when nobody holds it or its holder's time is up.
async fn take(db: &Db, tenant: TenantId, holder: Uuid) -> Result<bool, StoreError> {
    let mut tx = db.tenant_tx(tenant).await?;
    let taken: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO payment_leases (tenant_id, holder, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (tenant_id) DO UPDATE \
             SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE payment_leases.expires_at < now() \
         RETURNING holder",
    )
    .bind(tenant.as_uuid())
    .bind(holder)
    .bind(LEASE_TTL.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(taken == Some(holder))
}

impl PaymentLease {
    /// Extends the lease by a full TTL; an error when it was lost (expired and taken by
    /// another holder), in which case the caller must stop.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let mut tx = self.db.tenant_tx(self.tenant).await?;
        let renewed = sqlx::query(
            "UPDATE payment_leases SET expires_at = now() + make_interval(secs => $3) \
             WHERE tenant_id = $1 AND holder = $2",
        )
        .bind(self.tenant.as_uuid())
        .bind(self.holder)
        .bind(LEASE_TTL.as_secs_f64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(StoreError::Busy(format!(
                "the payment lease of {} was lost",
                self.tenant
            )))
        }
    }

    pub async fn release(mut self) -> Result<(), StoreError> {
        self.released = true;
        release(&self.db, self.tenant, self.holder).await
    }
}

impl Drop for PaymentLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (db, tenant, holder) = (self.db.clone(), self.tenant, self.holder);
        // Without a runtime (process exit) the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = release(&db, tenant, holder).await {
                    tracing::warn!(%tenant, %error, "payment lease left to expire");
                }
            });
        }
    }
}

async fn release(db: &Db, tenant: TenantId, holder: Uuid) -> Result<(), StoreError> {
    let mut tx = db.tenant_tx(tenant).await?;
    sqlx::query("DELETE FROM payment_leases WHERE tenant_id = $1 AND holder = $2")
        .bind(tenant.as_uuid())
        .bind(holder)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
