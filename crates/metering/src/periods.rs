//! Closing a tenant's billing period to usage, so that an invoice reads a final total.
//!
//! A batch is metered into the period current when its request is handled, but its
//! transaction may commit much later (a stalled connection, a paused process). Waiting a
//! fixed grace after the period's end bounds that risk without removing it. Instead, the
//! invoice run closes the period (a row in `usage_period_closures`) and then waits for
//! every ingest transaction of the tenant already under way ([`Db::lock_out_ingest`]):
//! those commit their events before the total is read, and every later one finds the
//! period closed and meters its batch into the next period instead (see
//! [`crate::ledger`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use tenancy::{Db, StoreError};

/// How long closing waits for the batches under way; one that takes longer (a stalled
/// client connection) is waited for again by the next run.
const WAIT_FOR_INGEST: Duration = Duration::from_secs(5);

/// Closes the period starting at `period_start` and waits until no ingest transaction can
/// still add to it; whether that is so (false: a batch is still under way, try later).
/// Closing a closed period again only waits.
pub async fn close(
    db: &Db,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let mut tx = db.tenant_tx(tenant).await?;
    sqlx::query(
        "INSERT INTO usage_period_closures (tenant_id, period_start) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .execute(&mut *tx)
    .await?;
    // In the same transaction: a batch that writes before this commits cannot see the
    // closing, but it holds the lock shared, so it is waited for; one that writes after
    // waits for the lock, and then sees the closing.
    let drained = Db::lock_out_ingest(&mut tx, tenant, WAIT_FOR_INGEST).await?;
    if drained {
        tx.commit().await?;
    }
    Ok(drained)
}

/// Whether some of the tenant's usage in the period starting `period_start` is in the
/// ledger but not yet in ClickHouse, as seen by `conn`'s transaction.
pub async fn has_unrelayed(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    period_start: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM usage_batches \
                        WHERE tenant_id = $1 AND period_start = $2 \
                          AND (ledger_xid, ledger_seq) > \
                              (SELECT ledger_xid, ledger_seq FROM usage_relay_cursor))",
    )
    .bind(tenant.as_uuid())
    .bind(period_start)
    .fetch_one(conn)
    .await?)
}
