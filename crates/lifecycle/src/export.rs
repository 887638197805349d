//! GDPR export: everything held about one tenant, as JSON.
//!
//! Postgres rows are exported whole (`to_jsonb`), minus the columns that hold secrets or
//! their hashes; usage events come from ClickHouse and from the Postgres ledger (what is
//! not relayed yet), merged by event id.

use std::collections::BTreeMap;

use metering::ClickHouseSink;
use saas_core::TenantId;
use serde_json::{Value, json};
use tenancy::{Db, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Usage(#[from] metering::SinkError),
}

impl From<sqlx::Error> for ExportError {
    fn from(error: sqlx::Error) -> Self {
        ExportError::Store(error.into())
    }
}

/// Each tenant-owned table, the query that exports its rows, under the name it gets in
/// the document. Static SQL; `$1` is the tenant.
const SECTIONS: &[(&str, &str)] = &[
    ("tenant", "SELECT to_jsonb(t) FROM tenants t WHERE id = $1"),
    (
        "signup",
        "SELECT to_jsonb(s) - 'token_hash' - 'request_hash' - 'first_response' - 'api_key_secret' \
                - 'first_key_hash' - 'first_key_sealed' - 'idempotency_scope' - 'token_sealed' \
         FROM signups s WHERE id = $1",
    ),
    (
        "api_keys",
        "SELECT coalesce(jsonb_agg(to_jsonb(k) - 'secret_hash' ORDER BY k.created_at), '[]') \
         FROM api_keys k WHERE tenant_id = $1",
    ),
    (
        "transitions",
        "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'response' ORDER BY t.created_at), '[]') \
         FROM tenant_transitions t WHERE tenant_id = $1",
    ),
    (
        "usage_counters",
        "SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.period_start, c.metric), '[]') \
         FROM usage_counters c WHERE tenant_id = $1",
    ),
    (
        "quota_alerts",
        "SELECT coalesce(jsonb_agg(to_jsonb(a)), '[]') FROM quota_alerts a WHERE tenant_id = $1",
    ),
    (
        "notifications",
        "SELECT coalesce(jsonb_agg(to_jsonb(n) ORDER BY n.created_at), '[]') \
         FROM notifications n WHERE tenant_id = $1",
    ),
    (
        "audit_log",
        "SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.chain_seq), '[]') \
         FROM audit_log a WHERE tenant_id = $1",
    ),
    (
        "invoices",
        "SELECT coalesce(jsonb_agg(to_jsonb(i) || jsonb_build_object('lines', \
             (SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY l.position), '[]') \
              FROM invoice_lines l WHERE l.invoice_id = i.id)) ORDER BY i.period_start), '[]') \
         FROM invoices i WHERE tenant_id = $1",
    ),
    (
        "deletion",
        "SELECT to_jsonb(d) FROM tenant_deletions d WHERE tenant_id = $1",
    ),
];

pub async fn export(
    db: &Db,
    clickhouse: &ClickHouseSink,
    tenant: TenantId,
) -> Result<Value, ExportError> {
    let mut document = serde_json::Map::new();
    document.insert("exported_at".into(), json!(chrono::Utc::now()));
    let mut tx = db.tenant_tx(tenant).await?;
    for (name, sql) in SECTIONS {
        let value: Option<Value> = sqlx::query_scalar(*sql)
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
        document.insert((*name).into(), value.unwrap_or(Value::Null));
    }
    let ledger: Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT event_id, metric, value::text, event_time FROM usage_events WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut events: BTreeMap<(String, String), Value> = BTreeMap::new();
    for event in clickhouse.tenant_events(tenant).await? {
        let time = chrono::DateTime::from_timestamp(i64::from(event.event_time), 0);
        events.insert(
            (event.metric.clone(), event.event_id.clone()),
            json!({"id": event.event_id, "metric": event.metric, "value": event.value, "timestamp": time}),
        );
    }
    for (id, metric, value, time) in ledger {
        let value: u64 = value
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("usage value {value:?}")))?;
        events.insert(
            (metric.clone(), id.clone()),
            json!({"id": id, "metric": metric, "value": value, "timestamp": time}),
        );
    }
    document.insert(
        "usage_events".into(),
        Value::Array(events.into_values().collect()),
    );
    Ok(Value::Object(document))
}
