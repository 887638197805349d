//! Changes of a tenant's state and plan. Each takes the [`StateMove`] the transition
//! table answered (only `saas_core::check_transition` makes one), and each is
//! conditional on the state it moves from, so a move that lost a race changes nothing
//! and says so.

use chrono::{DateTime, Utc};
use saas_core::{StateMove, TenantId};
use sqlx::PgConnection;

use crate::StoreError;

/// Moves the tenant's state as `step` says, if nobody moved it since it was read at
/// `expected_version`; whether it moved.
pub async fn move_state(
    conn: &mut PgConnection,
    id: TenantId,
    expected_version: i64,
    step: StateMove,
) -> Result<bool, StoreError> {
    one_row(
        sqlx::query(
            "UPDATE tenants SET state = $4, version = version + 1, updated_at = now() \
             WHERE id = $1 AND version = $2 AND state = $3",
        )
        .bind(id.as_uuid())
        .bind(expected_version)
        .bind(step.from().as_str())
        .bind(step.to().as_str()),
        conn,
    )
    .await
}

/// Ends a plan change that is under way (the tenant in `step.from()`): the tenant moves
/// to `step.to()` on `plan`, with new quotas from the commit on. False when the tenant
/// is not in that state (erased meanwhile, or done by an earlier attempt).
pub async fn switch_plan(
    conn: &mut PgConnection,
    id: TenantId,
    plan: &str,
    step: StateMove,
) -> Result<bool, StoreError> {
    one_row(
        sqlx::query(
            "UPDATE tenants SET plan_code = $2, state = $4, version = version + 1, updated_at = now() \
             WHERE id = $1 AND state = $3",
        )
        .bind(id.as_uuid())
        .bind(plan)
        .bind(step.from().as_str())
        .bind(step.to().as_str()),
        conn,
    )
    .await
}

/// Ends a plan change under way without changing the plan, and forgets any plan
/// scheduled (a change refused, or out of attempts). False when the tenant is not in
/// `step.from()`.
pub async fn abandon_plan_change(
    conn: &mut PgConnection,
    id: TenantId,
    step: StateMove,
) -> Result<bool, StoreError> {
    one_row(
        sqlx::query(
            "UPDATE tenants SET state = $3, scheduled_plan_code = NULL, scheduled_plan_at = NULL, \
                    version = version + 1, updated_at = now() \
             WHERE id = $1 AND state = $2",
        )
        .bind(id.as_uuid())
        .bind(step.from().as_str())
        .bind(step.to().as_str()),
        conn,
    )
    .await
}

/// Ends a plan change under way by scheduling `plan` for `at` (a downgrade at the
/// period's end). False when the tenant is not in `step.from()`.
pub async fn schedule_plan(
    conn: &mut PgConnection,
    id: TenantId,
    plan: &str,
    at: DateTime<Utc>,
    step: StateMove,
) -> Result<bool, StoreError> {
    one_row(
        sqlx::query(
            "UPDATE tenants SET scheduled_plan_code = $2, scheduled_plan_at = $3, state = $5, \
                    version = version + 1, updated_at = now() \
             WHERE id = $1 AND state = $4",
        )
        .bind(id.as_uuid())
        .bind(plan)
        .bind(at)
        .bind(step.from().as_str())
        .bind(step.to().as_str()),
        conn,
    )
    .await
}

/// Starts applying the scheduled `plan`: moves the tenant as `step` says only if nobody
/// moved it since `expected_version` and `plan` is still the one scheduled.
pub async fn take_for_scheduled_plan(
    conn: &mut PgConnection,
    id: TenantId,
    expected_version: i64,
    plan: &str,
    step: StateMove,
) -> Result<bool, StoreError> {
    one_row(
        sqlx::query(
            "UPDATE tenants SET state = $5, version = version + 1, updated_at = now() \
             WHERE id = $1 AND version = $2 AND scheduled_plan_code = $3 AND state = $4",
        )
        .bind(id.as_uuid())
        .bind(expected_version)
        .bind(plan)
        .bind(step.from().as_str())
        .bind(step.to().as_str()),
        conn,
    )
    .await
}

/// Switches to the scheduled `plan` and clears the schedule, if the tenant is in
/// `step.from()` with `plan` still scheduled: the moment it was scheduled for (`None`:
/// nothing to apply, done by an earlier attempt or replaced).
pub async fn apply_scheduled_plan(
    conn: &mut PgConnection,
    id: TenantId,
    plan: &str,
    step: StateMove,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    // The sub-select sees the row as it was before this update clears the schedule.
    let at: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "UPDATE tenants SET plan_code = $2, state = $4, \
                scheduled_plan_code = NULL, scheduled_plan_at = NULL, \
                version = version + 1, updated_at = now() \
         WHERE id = $1 AND state = $3 AND scheduled_plan_code = $2 \
         RETURNING (SELECT scheduled_plan_at FROM tenants WHERE id = $1)",
    )
    .bind(id.as_uuid())
    .bind(plan)
    .bind(step.from().as_str())
    .bind(step.to().as_str())
    .fetch_optional(conn)
    .await?;
    Ok(at.flatten())
}

/// Forgets the plan scheduled for the tenant, if any.
pub async fn clear_scheduled_plan(conn: &mut PgConnection, id: TenantId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tenants SET scheduled_plan_code = NULL, scheduled_plan_at = NULL WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs a conditional update of one tenant's row; whether it matched (false: the tenant
/// was not in the state the move starts from, or not at the version read).
async fn one_row(
    update: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    conn: &mut PgConnection,
) -> Result<bool, StoreError> {
    Ok(update.execute(conn).await?.rows_affected() == 1)
}
