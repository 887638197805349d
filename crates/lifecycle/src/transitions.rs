//! Taking a transition: one conditional update of the tenant's state and version, in the
//! transaction that also records the transition, the audit entry and the follow-up job.
//!
//! Of many concurrent requests for one tenant exactly one wins: the others either read
//! a state that is mid-transition or lose the version check, and get
//! [`TransitionError::InProgress`]. A request repeated with its `Idempotency-Key` gets
//! the first answer again.

use chrono::{DateTime, Utc};
use saas_core::{TenantId, TenantState, TransitionId};
use serde::Serialize;
use sqlx::PgConnection;
use tenancy::audit::{self, Actor, AuditEntry};
use tenancy::tenants::Tenant;
use tenancy::{Db, StoreError};
use webhooks::EventData;
use webhooks::events::StateChanged;

use crate::state_machine::{InvalidTransition, check_transition};
use crate::transition_jobs::{ErasureJob, PlanChangeJob};
pub use crate::transition_words::{Effective, TransitionKind, TransitionStatus};
use jobs::{JobKind, JobOptions};

mod records;

pub use records::{
    RecentTransition, export_json, get, last_suspended_by, list, mark_completed, recent,
    record_usage_before, set_effective_at, set_status, tenant_may_reactivate,
};

/// What is asked of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Move to `plan`. Upgrades take effect at once; downgrades at the end of the period
    /// unless `at_once`.
    Plan {
        plan: String,
        at_once: bool,
    },
    /// `tenant_may_reactivate`: the tenant may lift it itself (a suspension over an
    /// unpaid bill, once it pays); otherwise only an operator can.
    Suspend {
        tenant_may_reactivate: bool,
    },
    Reactivate,
    /// GDPR erasure: the tenant is `deleted` at once (its keys revoked with it), and a
    /// job removes its data.
    Erase,
}

impl Change {
    fn kind(&self) -> TransitionKind {
        match self {
            Change::Plan { .. } => TransitionKind::PlanChange,
            Change::Suspend { .. } => TransitionKind::Suspension,
            Change::Reactivate => TransitionKind::Reactivation,
            Change::Erase => TransitionKind::Erasure,
        }
    }

    /// Everything the caller asked, as stored with an `Idempotency-Key`: a retry must ask
    /// exactly this to be answered with the first result.
    fn asked(&self) -> String {
        match self {
            Change::Plan { plan, at_once } => {
                format!(
                    "plan_change:{plan}:{}",
                    if *at_once { "now" } else { "default" }
                )
            }
            Change::Suspend {
                tenant_may_reactivate,
            } => format!("suspension:{tenant_may_reactivate}"),
            Change::Reactivate => "reactivation".to_owned(),
            Change::Erase => "erasure".to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TransitionRequest {
    pub tenant_id: TenantId,
    pub change: Change,
    pub actor: Actor,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// A transition as reported to callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Transition {
    pub id: TransitionId,
    /// `plan_change`, `suspension`, `reactivation` or `erasure`.
    #[schema(value_type = String)]
    pub kind: TransitionKind,
    /// The tenant's state before.
    pub from: TenantState,
    /// The state the transition moved the tenant to (`upgrading` or `downgrading` while a
    /// plan change runs).
    pub to: TenantState,
    pub from_plan: String,
    pub to_plan: String,
    /// `running`, `scheduled` (a downgrade waiting for the period's end), `completed`,
    /// `failed` or `canceled`.
    #[schema(value_type = String)]
    pub state: TransitionStatus,
    /// `now`, or `period_end` for a deferred downgrade.
    #[schema(value_type = String)]
    pub effective: Effective,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("another transition of this tenant is running")]
    InProgress,
    #[error(transparent)]
    Invalid(#[from] InvalidTransition),
    #[error("the tenant is on plan {0} already")]
    SamePlan(String),
    #[error("unknown plan {0:?}")]
    UnknownPlan(String),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("tenant not found")]
    TenantNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TransitionError {
    fn from(error: sqlx::Error) -> Self {
        TransitionError::Store(error.into())
    }
}

/// The first answer to `request`'s `Idempotency-Key`, if one was given and answered:
/// a retry is told what happened before any of its side effects (a charge) is repeated.
pub async fn answered(
    db: &Db,
    request: &TransitionRequest,
) -> Result<Option<Transition>, TransitionError> {
    if request.idempotency_key.is_none() {
        return Ok(None);
    }
    let mut tx = db.tenant_tx(request.tenant_id).await?;
    let first = replay(&mut tx, request).await?;
    tx.commit().await?;
    Ok(first)
}

/// Takes the transition `request` asks for, or says why not.
#[tracing::instrument(name = "transition_begin", skip_all,
    fields(tenant = %request.tenant_id, kind = %request.change.kind()))]
pub async fn begin(db: &Db, request: &TransitionRequest) -> Result<Transition, TransitionError> {
    let mut tx = db.tenant_tx(request.tenant_id).await?;
    if let Some(first) = replay(&mut tx, request).await? {
        return Ok(first);
    }
    let tenant = match tenancy::tenants::get(&mut tx, request.tenant_id).await {
        Ok(tenant) => tenant,
        Err(StoreError::NotFound) => return Err(TransitionError::TenantNotFound),
        Err(other) => return Err(other.into()),
    };
    // Erasure asked again: the first one's answer (its job finishes what is left).
    if request.change == Change::Erase
        && tenant.state == TenantState::Deleted
        && let Some(first) = list(&mut tx, tenant.id, 100)
            .await?
            .into_iter()
            .find(|t| t.kind == TransitionKind::Erasure)
    {
        return Ok(first);
    }
    let plan = target(&mut tx, &tenant, &request.change).await?;
    // One transition at a time, except erasure: a data subject's request does not wait
    // for a plan change (whose job then finds the tenant deleted and stops).
    if matches!(
        tenant.state,
        TenantState::Upgrading | TenantState::Downgrading
    ) && request.change != Change::Erase
    {
        return Err(TransitionError::InProgress);
    }
    let step = check_transition(tenant.state, plan.to_state)?;

    // The one place a transition is taken: only if nobody moved the tenant since we read it.
    let moved = tenancy::tenants::move_state(&mut tx, tenant.id, tenant.version, step).await?;
    if !moved {
        drop(tx);
        // A twin with the same key may have won: it committed before our update gave up.
        let mut tx = db.tenant_tx(request.tenant_id).await?;
        if let Some(first) = replay(&mut tx, request).await? {
            return Ok(first);
        }
        return Err(TransitionError::InProgress);
    }

    let instant = matches!(request.change, Change::Suspend { .. } | Change::Reactivate);
    let transition = Transition {
        id: TransitionId::new(),
        kind: request.change.kind(),
        from: tenant.state,
        to: plan.to_state,
        from_plan: tenant.plan_code.clone(),
        to_plan: plan.code.clone(),
        state: if instant {
            TransitionStatus::Completed
        } else {
            TransitionStatus::Running
        },
        effective: if plan.at_period_end {
            Effective::PeriodEnd
        } else {
            Effective::Now
        },
        failure_reason: None,
        created_at: Utc::now(),
        completed_at: instant.then(Utc::now),
    };
    let response =
        serde_json::to_value(&transition).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let inserted = sqlx::query(
        "INSERT INTO tenant_transitions (id, tenant_id, kind, from_state, to_state, from_plan, \
             to_plan, effective, status, actor, reason, request_id, idempotency_key, response, \
             completed_at, tenant_may_reactivate, asked) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(transition.id.as_uuid())
    .bind(tenant.id.as_uuid())
    .bind(transition.kind)
    .bind(transition.from.as_str())
    .bind(transition.to.as_str())
    .bind(&transition.from_plan)
    .bind(&transition.to_plan)
    .bind(transition.effective)
    .bind(transition.state)
    .bind(request.actor.as_text())
    .bind(&request.reason)
    .bind(&request.request_id)
    .bind(&request.idempotency_key)
    .bind(&response)
    .bind(transition.completed_at)
    .bind(matches!(
        request.change,
        Change::Suspend {
            tenant_may_reactivate: true
        }
    ))
    .bind(request.change.asked())
    .execute(&mut *tx)
    .await;
    match inserted.map_err(StoreError::from) {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            drop(tx);
            let mut tx = db.tenant_tx(request.tenant_id).await?;
            return replay(&mut tx, request)
                .await?
                .ok_or(TransitionError::InProgress);
        }
        Err(other) => return Err(other.into()),
    }
    // A new plan change replaces a downgrade that was waiting for the period's end.
    if matches!(request.change, Change::Plan { .. }) {
        cancel_scheduled_plan(&mut tx, tenant.id).await?;
    }

    let mut entry = AuditEntry::new(Some(tenant.id), request.actor.clone(), "tenant.transition");
    entry.from_state = Some(tenant.state);
    entry.to_state = Some(plan.to_state);
    entry.reason = request.reason.clone();
    entry.request_id = request.request_id.clone();
    entry.details = serde_json::json!({
        "transition_id": transition.id,
        "kind": transition.kind,
        "from_plan": transition.from_plan,
        "to_plan": transition.to_plan,
        "effective": transition.effective,
    });
    audit::record(&mut tx, &entry).await?;
    let state_changed = || StateChanged {
        transition_id: transition.id,
        from_state: tenant.state,
        to_state: plan.to_state,
        reason: request.reason.clone(),
    };
    match request.change {
        Change::Suspend { .. } => {
            webhooks::emit(
                &mut tx,
                tenant.id,
                EventData::TenantSuspended(state_changed()),
            )
            .await?;
        }
        Change::Reactivate => {
            webhooks::emit(
                &mut tx,
                tenant.id,
                EventData::TenantReactivated(state_changed()),
            )
            .await?;
        }
        Change::Plan { .. } | Change::Erase => {}
    }

    // Win-back: a suspension starts a campaign; coming back or erasure ends it.
    match request.change {
        Change::Suspend { .. } => crate::winback::start(&mut tx, tenant.id, "suspended").await?,
        Change::Reactivate => crate::winback::end(&mut tx, tenant.id, "won").await?,
        Change::Erase => crate::winback::end(&mut tx, tenant.id, "ended").await?,
        Change::Plan { .. } => {}
    }
    if request.change == Change::Erase {
        // Access ends with this commit.
        tenancy::api_keys::revoke_all(&mut tx, tenant.id).await?;
    }
    if !instant {
        let options = JobOptions::dedup_key(transition.id.to_string()).max_attempts(20);
        let (transition_id, tenant_id) = (transition.id, tenant.id);
        if request.change == Change::Erase {
            let job = ErasureJob {
                transition_id,
                tenant_id,
            };
            job.enqueue(&mut tx, options).await?;
        } else {
            let job = PlanChangeJob {
                transition_id,
                tenant_id,
            };
            job.enqueue(&mut tx, options).await?;
        }
    }
    tx.commit().await?;
    metrics::counter!("tenant_transitions_total", "kind" => transition.kind.as_str()).increment(1);
    tracing::info!(tenant = %tenant.id, transition = %transition.id, kind = %transition.kind,
        from = %transition.from, to = %transition.to, "transition taken");
    Ok(transition)
}

struct Target {
    to_state: TenantState,
    code: String,
    at_period_end: bool,
}

async fn target(
    conn: &mut PgConnection,
    tenant: &Tenant,
    change: &Change,
) -> Result<Target, TransitionError> {
    let same = |to_state| Target {
        to_state,
        code: tenant.plan_code.clone(),
        at_period_end: false,
    };
    Ok(match change {
        Change::Suspend { .. } => same(TenantState::Suspended),
        Change::Reactivate => same(TenantState::Active),
        Change::Erase => same(TenantState::Deleted),
        Change::Plan { plan, at_once } => {
            let new = match tenancy::plans::get(conn, plan).await {
                Ok(new) => new,
                Err(StoreError::NotFound) => {
                    return Err(TransitionError::UnknownPlan(plan.clone()));
                }
                Err(other) => return Err(other.into()),
            };
            let current = tenancy::plans::get(conn, &tenant.plan_code).await?;
            if new.code == current.code {
                return Err(TransitionError::SamePlan(new.code));
            }
            let upgrade = new.rank > current.rank;
            Target {
                to_state: if upgrade {
                    TenantState::Upgrading
                } else {
                    TenantState::Downgrading
                },
                code: new.code,
                at_period_end: !upgrade && !at_once,
            }
        }
    })
}

/// The first answer to this request's Idempotency-Key, if it was used before.
async fn replay(
    conn: &mut PgConnection,
    request: &TransitionRequest,
) -> Result<Option<Transition>, TransitionError> {
    let Some(key) = &request.idempotency_key else {
        return Ok(None);
    };
    let found: Option<(TransitionKind, String, Option<String>, serde_json::Value)> =
        sqlx::query_as(
            "SELECT kind, to_plan, asked, response FROM tenant_transitions \
         WHERE tenant_id = $1 AND idempotency_key = $2",
        )
        .bind(request.tenant_id.as_uuid())
        .bind(key)
        .fetch_optional(conn)
        .await?;
    let Some((kind, to_plan, asked, response)) = found else {
        return Ok(None);
    };
    let same_request = match asked {
        Some(asked) => asked == request.change.asked(),
        // Taken before requests were stored whole: kind and plan are what is known.
        None => {
            kind == request.change.kind()
                && match &request.change {
                    Change::Plan { plan, .. } => *plan == to_plan,
                    _ => true,
                }
        }
    };
    if !same_request {
        return Err(TransitionError::IdempotencyKeyReused);
    }
    serde_json::from_value(response)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(e.to_string()).into())
}

async fn cancel_scheduled_plan(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<(), StoreError> {
    tenancy::tenants::clear_scheduled_plan(&mut *conn, tenant).await?;
    sqlx::query(
        "UPDATE tenant_transitions SET status = 'canceled', completed_at = now() \
         WHERE tenant_id = $1 AND status = 'scheduled'",
    )
    .bind(tenant.as_uuid())
    .execute(conn)
    .await?;
    Ok(())
}
