//! One lock per tenant around work at the payment provider that creates invoices.
//!
//! Stripe sweeps *all* of a customer's pending invoice items into the next invoice it
//! makes, whoever asks for it: an invoice push, or a new subscription's first invoice.
//! Whoever creates items or invoices for a tenant at Stripe holds this lock meanwhile.

use saas_core::TenantId;

use crate::{Db, DbTx, StoreError};

/// Takes the tenant's payment lock, waiting for its holder. It is held as long as the
/// returned transaction is open (and released when the process dies with it); commit or
/// drop it to release.
pub async fn acquire(db: &Db, tenant: TenantId) -> Result<DbTx, StoreError> {
    let mut lock = db.tenant_tx(tenant).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('payments'), hashtext($1))")
        .bind(tenant.to_string())
        .execute(&mut *lock)
        .await?;
    Ok(lock)
}
