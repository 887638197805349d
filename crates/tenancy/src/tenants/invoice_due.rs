//! When each tenant next has a period to invoice (`tenants.invoice_due_at`), so that
//! invoice runs read only the tenants that are due, through an index, rather than every
//! tenant every interval.

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Tenant, TenantRow};
use crate::StoreError;

/// The tenants that are billed, as the due index (`tenants_invoice_due_idx`) names them:
/// every read repeats its predicate, so that the index serves it. Readiness probes are
/// never billed, provisioning tenants have no period yet, erased ones no usage left.
macro_rules! billed {
    () => {
        "NOT synthetic AND state NOT IN ('provisioning', 'deleted')"
    };
}

/// Where a page of due tenants ends, to start the next page after it.
pub type InvoiceDue = (DateTime<Utc>, TenantId);

/// Up to `limit` billed tenants due for an invoice at `at` (their oldest period without
/// an invoice ended by then), in due order, after `after`. Needs a system transaction.
pub async fn due_for_invoice(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
    after: Option<InvoiceDue>,
    limit: u32,
) -> Result<Vec<(InvoiceDue, Tenant)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        invoice_due_at: DateTime<Utc>,
        #[sqlx(flatten)]
        tenant: TenantRow,
    }
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT invoice_due_at, ",
        columns!(),
        " FROM tenants WHERE invoice_due_at <= $1 AND ",
        billed!(),
        " AND ($2::timestamptz IS NULL OR (invoice_due_at, id) > ($2, $3)) \
         ORDER BY invoice_due_at, id LIMIT $4"
    ))
    .bind(at)
    .bind(after.map(|(due, _)| due))
    .bind(after.map(|(_, id)| id.as_uuid()))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let tenant = Tenant::try_from(row.tenant)?;
            Ok(((row.invoice_due_at, tenant.id), tenant))
        })
        .collect()
}

/// The ids of every billed tenant due for an invoice at `at`, in due order (for
/// handing out, not for reading the tenants). Needs a system transaction.
pub async fn due_ids(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
) -> Result<Vec<TenantId>, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(concat!(
        "SELECT id FROM tenants WHERE invoice_due_at <= $1 AND ",
        billed!(),
        " ORDER BY invoice_due_at, id"
    ))
    .bind(at)
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().map(TenantId::from_uuid).collect())
}

/// Moves each tenant's due time to the given one: the end of its oldest period still to
/// invoice. Needs a system transaction.
pub async fn set_invoice_due(
    conn: &mut PgConnection,
    due: &[(TenantId, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) =
        due.iter().map(|(id, at)| (id.as_uuid(), *at)).unzip();
    sqlx::query(
        "UPDATE tenants SET invoice_due_at = due.at \
         FROM unnest($1::uuid[], $2::timestamptz[]) AS due (id, at) \
         WHERE tenants.id = due.id AND tenants.invoice_due_at IS DISTINCT FROM due.at",
    )
    .bind(&ids)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}

/// Those of `ids` that are billed and still due at `at` (a tenant invoiced since, by
/// another run, is not). Needs a system transaction.
pub async fn due_among(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
    ids: &[TenantId],
) -> Result<Vec<Tenant>, StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let rows: Vec<TenantRow> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM tenants WHERE id = ANY($2) AND invoice_due_at <= $1 AND ",
        billed!(),
        " ORDER BY id"
    ))
    .bind(at)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Tenant::try_from).collect()
}
