//! The synthetic tenants `/readiness` works with, and what their runs leave behind.

use crate::{Db, StoreError};

/// Removes what earlier readiness runs left: erased onboarding probes whole, the standing
/// probes' finished transitions, their jobs and old counters. The work is the
/// security-definer `purge_readiness_probes()` (migrations), which touches synthetic
/// tenants only. Returns the rows removed.
pub async fn purge(db: &Db) -> Result<u64, StoreError> {
    let mut tx = db.system_tx("readiness purge").await?;
    let purged: i32 = sqlx::query_scalar("SELECT purge_readiness_probes()")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u64::try_from(purged).unwrap_or_default())
}
