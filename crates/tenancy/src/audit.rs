//! The audit log: append-only, one row per state change or operator action.

use saas_core::{TenantId, TenantState};
use serde_json::Value;
use sqlx::PgConnection;

use crate::StoreError;

/// Who acted. Rendered into the log as text that carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Tenant(saas_core::ApiKeyId),
    System(&'static str),
}

impl Actor {
    pub fn as_text(&self) -> String {
        match self {
            Actor::Operator => "operator".to_owned(),
            Actor::Tenant(key) => format!("tenant:{key}"),
            Actor::System(worker) => format!("system:{worker}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub tenant_id: Option<TenantId>,
    pub actor: Actor,
    pub action: &'static str,
    pub from_state: Option<TenantState>,
    pub to_state: Option<TenantState>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
}

impl AuditEntry {
    pub fn new(tenant_id: Option<TenantId>, actor: Actor, action: &'static str) -> Self {
        Self {
            tenant_id,
            actor,
            action,
            from_state: None,
            to_state: None,
            reason: None,
            request_id: None,
            details: Value::Object(Default::default()),
        }
    }
}

pub async fn record(conn: &mut PgConnection, entry: &AuditEntry) -> Result<i64, StoreError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO audit_log (tenant_id, actor, action, from_state, to_state, reason, \
                                request_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(entry.tenant_id.map(|id| id.as_uuid()))
    .bind(entry.actor.as_text())
    .bind(entry.action)
    .bind(entry.from_state.map(TenantState::as_str))
    .bind(entry.to_state.map(TenantState::as_str))
    .bind(&entry.reason)
    .bind(&entry.request_id)
    .bind(&entry.details)
    .fetch_one(conn)
    .await?;
    Ok(id)
}
