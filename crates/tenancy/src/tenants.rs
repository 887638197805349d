//! Tenants: who they are, which plan and billing period they are on, and their state.

use chrono::{DateTime, DurationRound, Utc};
use std::collections::BTreeMap;

use saas_core::{BillingCycle, BillingPeriod, Metric, TenantId, TenantState};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;
use crate::plans::{MetricTerms, PlanMetricRow, to_terms};

mod moves;

pub use moves::{
    abandon_plan_change, apply_scheduled_plan, clear_scheduled_plan, move_state, schedule_plan,
    switch_plan, take_for_scheduled_plan,
};

#[derive(Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub email: Option<String>,
    pub state: TenantState,
    pub plan_code: String,
    pub billing_anchor: DateTime<Utc>,
    pub billing_cycle: BillingCycle,
    pub version: i64,
    pub synthetic: bool,
    pub stripe_customer_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The plan scheduled to replace `plan_code` (a downgrade at the period's end), and
    /// when.
    pub scheduled_plan: Option<(String, DateTime<Utc>)>,
}

#[derive(Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub name: String,
    pub email: Option<String>,
    pub state: TenantState,
    pub plan_code: String,
    pub billing_anchor: DateTime<Utc>,
    pub billing_cycle: BillingCycle,
    pub synthetic: bool,
    pub stripe_customer_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    name: String,
    email: Option<String>,
    state: String,
    plan_code: String,
    billing_anchor: DateTime<Utc>,
    billing_cycle: String,
    version: i64,
    synthetic: bool,
    stripe_customer_id: Option<String>,
    created_at: DateTime<Utc>,
    scheduled_plan_code: Option<String>,
    scheduled_plan_at: Option<DateTime<Utc>>,
}

impl Tenant {
    /// The billing period that contains `at`.
    pub fn period_at(&self, at: DateTime<Utc>) -> BillingPeriod {
        self.billing_cycle
            .period_containing(self.billing_anchor, at)
    }
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;

    fn try_from(row: TenantRow) -> Result<Self, Self::Error> {
        Ok(Tenant {
            id: TenantId::from_uuid(row.id),
            name: row.name,
            email: row.email,
            state: row.state.parse()?,
            plan_code: row.plan_code,
            billing_anchor: row.billing_anchor,
            billing_cycle: row
                .billing_cycle
                .parse()
                .map_err(|e: saas_core::InvalidBillingCycle| StoreError::Corrupt(e.to_string()))?,
            version: row.version,
            synthetic: row.synthetic,
            stripe_customer_id: row.stripe_customer_id,
            created_at: row.created_at,
            scheduled_plan: row.scheduled_plan_code.zip(row.scheduled_plan_at),
        })
    }
}

/// The columns `TenantRow` reads, as a literal so that queries stay static strings.
macro_rules! columns {
    () => {
        "id, name, email, state, plan_code, billing_anchor, billing_cycle, version, synthetic, \
         stripe_customer_id, created_at, scheduled_plan_code, scheduled_plan_at"
    };
}

// After the macro, which it uses.
mod invoice_due;

pub use invoice_due::{InvoiceDue, due_among, due_for_invoice, due_ids, set_invoice_due};

pub async fn insert(conn: &mut PgConnection, new: &NewTenant) -> Result<Tenant, StoreError> {
    // Whole seconds, like every usage timestamp, so that an event in the anchor's first
    // second is not before the period's start.
    let anchor = new
        .billing_anchor
        .duration_trunc(chrono::TimeDelta::seconds(1))
        .unwrap_or(new.billing_anchor);
    // Nothing to invoice before the first period ends.
    let first_due = new.billing_cycle.period_containing(anchor, anchor).end;
    let row: TenantRow = sqlx::query_as(concat!(
        "INSERT INTO tenants (id, name, email, state, plan_code, billing_anchor, billing_cycle, \
                              synthetic, stripe_customer_id, invoice_due_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ",
        columns!()
    ))
    .bind(new.id.as_uuid())
    .bind(&new.name)
    .bind(&new.email)
    .bind(new.state.as_str())
    .bind(&new.plan_code)
    .bind(anchor)
    .bind(new.billing_cycle.to_string())
    .bind(new.synthetic)
    .bind(&new.stripe_customer_id)
    .bind(first_due)
    .fetch_one(conn)
    .await?;
    row.try_into()
}

pub async fn get(conn: &mut PgConnection, id: TenantId) -> Result<Tenant, StoreError> {
    read_one(
        conn,
        id,
        concat!("SELECT ", columns!(), " FROM tenants WHERE id = $1"),
    )
    .await
}

/// The tenant, read under a share lock held until the transaction ends: a change of its
/// row (an erasure, say) waits for the caller, or has happened and is seen.
pub async fn get_for_share(conn: &mut PgConnection, id: TenantId) -> Result<Tenant, StoreError> {
    read_one(
        conn,
        id,
        concat!(
            "SELECT ",
            columns!(),
            " FROM tenants WHERE id = $1 FOR SHARE"
        ),
    )
    .await
}

async fn read_one(
    conn: &mut PgConnection,
    id: TenantId,
    sql: &'static str,
) -> Result<Tenant, StoreError> {
    let row: TenantRow = sqlx::query_as(sql)
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound)?;
    row.try_into()
}

/// The states of the given tenants, by id (those that do not exist are absent).
pub async fn states_of(
    conn: &mut PgConnection,
    ids: &[TenantId],
) -> Result<std::collections::HashMap<TenantId, TenantState>, StoreError> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, state FROM tenants WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|(id, state)| Ok((TenantId::from_uuid(id), state.parse()?)))
        .collect()
}

/// A tenant and the per-metric terms of its current plan, in one round trip: the ingest
/// path reads both on every batch.
pub async fn get_with_terms(
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<(Tenant, BTreeMap<Metric, MetricTerms>), StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        tenant: TenantRow,
        terms: sqlx::types::Json<Vec<PlanMetricRow>>,
    }
    let row: Row = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        ", (SELECT coalesce(json_agg(pm), '[]') FROM plan_metrics pm \
            WHERE pm.plan_code = tenants.plan_code) AS terms \
         FROM tenants WHERE id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    let terms = row
        .terms
        .0
        .iter()
        .map(|metric| Ok((metric.metric.parse()?, to_terms(metric)?)))
        .collect::<Result<_, StoreError>>()?;
    Ok((row.tenant.try_into()?, terms))
}

/// Filter and keyset page for the operator's tenant list.
#[derive(Debug, Clone, Default)]
pub struct TenantQuery {
    pub state: Option<TenantState>,
    /// Return tenants whose id sorts after this one (the previous page's last id).
    pub after: Option<TenantId>,
    pub limit: u32,
    /// Readiness probes are hidden unless asked for.
    pub include_synthetic: bool,
}

/// Lists tenants across the whole store; needs a system transaction.
pub async fn list(conn: &mut PgConnection, query: &TenantQuery) -> Result<Vec<Tenant>, StoreError> {
    let rows: Vec<TenantRow> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM tenants \
         WHERE ($1::text IS NULL OR state = $1) \
           AND ($2::uuid IS NULL OR id > $2) \
           AND ($3 OR NOT synthetic) \
         ORDER BY id LIMIT $4"
    ))
    .bind(query.state.map(TenantState::as_str))
    .bind(query.after.map(|id| id.as_uuid()))
    .bind(query.include_synthetic)
    .bind(i64::from(query.limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Tenant::try_from).collect()
}

// Name and email are personal data: kept out of logs and panics.
impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("plan_code", &self.plan_code)
            .field("billing_anchor", &self.billing_anchor)
            .field("billing_cycle", &self.billing_cycle)
            .field("version", &self.version)
            .field("synthetic", &self.synthetic)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NewTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTenant")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("plan_code", &self.plan_code)
            .finish_non_exhaustive()
    }
}

/// The tenant's row for its data export, without the columns that hold secrets.
pub async fn export_json(
    conn: &mut PgConnection,
    id: TenantId,
) -> Result<Option<serde_json::Value>, StoreError> {
    db::export_json(
        conn,
        "SELECT to_jsonb(t) - 'email_verification_hash' FROM tenants t WHERE id = $1",
        id,
    )
    .await
}

/// Erases the tenant's personal data (its name, email and any pending confirmation);
/// its Stripe ids too when `forget_stripe_ids` (they go only with the customer, so that
/// without billing configured here the customer can still be deleted later). Rows
/// changed.
pub async fn erase_personal(
    conn: &mut PgConnection,
    id: TenantId,
    forget_stripe_ids: bool,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE tenants SET name = 'erased', email = NULL, email_verification_hash = NULL, \
                stripe_customer_id = CASE WHEN $2 THEN NULL ELSE stripe_customer_id END, \
                stripe_subscription_id = CASE WHEN $2 THEN NULL ELSE stripe_subscription_id END, \
                scheduled_plan_code = NULL, scheduled_plan_at = NULL, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(forget_stripe_ids)
    .execute(conn)
    .await?
    .rows_affected())
}

// How many tenants are in one state (operator overview).
#[derive(Debug, serde::Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct StateCount {
    pub state: String,
    pub tenants: i64,
}

/// Tenants per state, readiness probes left out.
pub async fn count_by_state(conn: &mut PgConnection) -> Result<Vec<StateCount>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT state, count(*) AS tenants FROM tenants WHERE NOT synthetic \
         GROUP BY state ORDER BY state",
    )
    .fetch_all(conn)
    .await?)
}
