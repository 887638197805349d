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

/// Reports kept; older ones are deleted as new ones come.
const REPORTS_KEPT: i64 = 100;

/// Stores a readiness run's report (as JSON) as the latest.
pub async fn store_report(db: &Db, report: &serde_json::Value) -> Result<(), StoreError> {
    let mut tx = db.system_tx("readiness report").await?;
    sqlx::query("INSERT INTO readiness_reports (report) VALUES ($1)")
        .bind(report)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM readiness_reports WHERE id <= \
             (SELECT max(id) FROM readiness_reports) - $1",
    )
    .bind(REPORTS_KEPT)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The latest stored report and its age in seconds (by the database's clock), if any.
pub async fn latest_report(db: &Db) -> Result<Option<(serde_json::Value, f64)>, StoreError> {
    let mut tx = db.system_tx("readiness report").await?;
    let latest = sqlx::query_as(
        "SELECT report, extract(epoch FROM now() - finished_at)::float8 \
         FROM readiness_reports ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(latest)
}
