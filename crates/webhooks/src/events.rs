//! The events tenants can subscribe to, and the exact body each delivery carries.
//!
//! A body is `{"id", "type", "timestamp", "version", "tenant_id", "data"}` (the
//! Standard Webhooks payload shape, with the event's id and our schema version added).
//! `data` depends on `type`; `version` is the version of that shape: fields are only
//! ever added within a version.

use chrono::{DateTime, Utc};
use saas_core::{ApiKeyId, Metric, TenantId, TenantState, TransitionId, WebhookEventId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The version of every event's `data` shape.
pub const PAYLOAD_VERSION: u32 = 1;

/// Usage of a metric crossed 80% or 100% of its quota in a period (once each).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UsageThresholdReached {
    pub metric: Metric,
    /// 80 or 100.
    pub threshold_percent: u8,
    /// Usage of the period right after the crossing.
    pub used: u64,
    pub quota: u64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// An invoice, as the invoice events carry it. Amounts are integers in minor units.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InvoiceSummary {
    /// Our invoice id, as `GET /v1/invoices` shows it.
    pub invoice_id: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub currency: String,
    pub total: i64,
    pub status: String,
}

/// A payment of an invoice failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PaymentFailed {
    pub invoice_id: String,
    pub amount_due: i64,
    pub currency: String,
    /// Why, as the payment provider put it, when it said.
    pub reason: Option<String>,
    /// When the payment is tried again; absent when no retry is left.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// A retry of a failed payment is scheduled.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DunningRetryScheduled {
    pub invoice_id: String,
    /// The number of this retry, from 1.
    pub retry: u32,
    pub retry_at: DateTime<Utc>,
}

/// The tenant's state changed (suspended, reactivated).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StateChanged {
    pub transition_id: TransitionId,
    pub from_state: TenantState,
    pub to_state: TenantState,
    pub reason: Option<String>,
}

/// A plan change finished, or failed and left the plan as it was.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PlanChange {
    pub transition_id: TransitionId,
    pub from_plan: String,
    pub to_plan: String,
    /// Why it failed (`plan_change.failed` only).
    pub reason: Option<String>,
}

/// An API key was created or revoked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ApiKeyChanged {
    pub api_key_id: ApiKeyId,
    pub name: String,
    /// The first characters of the secret, to tell keys apart (never the secret).
    pub prefix: String,
}

/// The tenant's data is erased; this is the last event it gets, and its endpoints are
/// erased once it is delivered (or has failed for good).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ErasureCompleted {
    pub erased_at: DateTime<Utc>,
}

/// What happened, by event type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum EventData {
    #[serde(rename = "usage.threshold_reached")]
    UsageThresholdReached(UsageThresholdReached),
    #[serde(rename = "invoice.created")]
    InvoiceCreated(InvoiceSummary),
    #[serde(rename = "invoice.paid")]
    InvoicePaid(InvoiceSummary),
    #[serde(rename = "invoice.payment_failed")]
    InvoicePaymentFailed(PaymentFailed),
    #[serde(rename = "dunning.retry_scheduled")]
    DunningRetryScheduled(DunningRetryScheduled),
    #[serde(rename = "tenant.suspended")]
    TenantSuspended(StateChanged),
    #[serde(rename = "tenant.reactivated")]
    TenantReactivated(StateChanged),
    #[serde(rename = "plan_change.completed")]
    PlanChangeCompleted(PlanChange),
    #[serde(rename = "plan_change.failed")]
    PlanChangeFailed(PlanChange),
    #[serde(rename = "api_key.created")]
    ApiKeyCreated(ApiKeyChanged),
    #[serde(rename = "api_key.revoked")]
    ApiKeyRevoked(ApiKeyChanged),
    #[serde(rename = "tenant.erasure_completed")]
    TenantErasureCompleted(ErasureCompleted),
}

/// Every event type, with a line about it and the schema of its `data`: the catalogue
/// the API validates subscriptions against and documents.
pub const EVENT_TYPES: &[(&str, &str)] = &[
    (
        "usage.threshold_reached",
        "Usage of a metric crossed 80% or 100% of its quota in a period (once each).",
    ),
    ("invoice.created", "An invoice was issued for a period."),
    ("invoice.paid", "An invoice was paid in full."),
    (
        "invoice.payment_failed",
        "A payment of an invoice failed; `next_retry_at` says when it is tried again.",
    ),
    (
        "dunning.retry_scheduled",
        "A retry of a failed payment is scheduled.",
    ),
    ("tenant.suspended", "The tenant was suspended."),
    ("tenant.reactivated", "The tenant was reactivated."),
    ("plan_change.completed", "A plan change took effect."),
    (
        "plan_change.failed",
        "A plan change failed; the plan is as it was.",
    ),
    ("api_key.created", "An API key was created."),
    ("api_key.revoked", "An API key was revoked."),
    (
        "tenant.erasure_completed",
        "The tenant's data was erased; the last event it gets.",
    ),
];

/// Whether `name` is an event type (or `*`, every type).
pub fn is_known_type(name: &str) -> bool {
    name == "*" || EVENT_TYPES.iter().any(|(known, _)| *known == name)
}

impl EventData {
    /// The event's type, as subscriptions name it.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventData::UsageThresholdReached(_) => "usage.threshold_reached",
            EventData::InvoiceCreated(_) => "invoice.created",
            EventData::InvoicePaid(_) => "invoice.paid",
            EventData::InvoicePaymentFailed(_) => "invoice.payment_failed",
            EventData::DunningRetryScheduled(_) => "dunning.retry_scheduled",
            EventData::TenantSuspended(_) => "tenant.suspended",
            EventData::TenantReactivated(_) => "tenant.reactivated",
            EventData::PlanChangeCompleted(_) => "plan_change.completed",
            EventData::PlanChangeFailed(_) => "plan_change.failed",
            EventData::ApiKeyCreated(_) => "api_key.created",
            EventData::ApiKeyRevoked(_) => "api_key.revoked",
            EventData::TenantErasureCompleted(_) => "tenant.erasure_completed",
        }
    }
}

/// The name and schema of the `data` of an event type, for the API document.
pub fn data_schema(
    event_type: &str,
) -> Option<(
    &'static str,
    utoipa::openapi::RefOr<utoipa::openapi::Schema>,
)> {
    use utoipa::PartialSchema;
    Some(match event_type {
        "usage.threshold_reached" => ("UsageThresholdReached", UsageThresholdReached::schema()),
        "invoice.created" | "invoice.paid" => ("InvoiceSummary", InvoiceSummary::schema()),
        "invoice.payment_failed" => ("PaymentFailed", PaymentFailed::schema()),
        "dunning.retry_scheduled" => ("DunningRetryScheduled", DunningRetryScheduled::schema()),
        "tenant.suspended" | "tenant.reactivated" => ("StateChanged", StateChanged::schema()),
        "plan_change.completed" | "plan_change.failed" => ("PlanChange", PlanChange::schema()),
        "api_key.created" | "api_key.revoked" => ("ApiKeyChanged", ApiKeyChanged::schema()),
        "tenant.erasure_completed" => ("ErasureCompleted", ErasureCompleted::schema()),
        _ => return None,
    })
}

/// A whole event body, as delivered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: WebhookEventId,
    pub timestamp: DateTime<Utc>,
    pub version: u32,
    pub tenant_id: TenantId,
    #[serde(flatten)]
    pub data: EventData,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_names_every_type_and_the_body_has_the_documented_shape() {
        let data = EventData::ApiKeyRevoked(ApiKeyChanged {
            api_key_id: ApiKeyId::new(),
            name: "ci".into(),
            prefix: "sk_live_ab".into(),
        });
        assert!(is_known_type(data.type_name()));
        let event = Event {
            id: WebhookEventId::new(),
            timestamp: Utc::now(),
            version: PAYLOAD_VERSION,
            tenant_id: TenantId::new(),
            data,
        };
        let body = serde_json::to_value(&event).unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["data", "id", "tenant_id", "timestamp", "type", "version"]
        );
        assert_eq!(body["type"], "api_key.revoked");
        assert_eq!(body["data"]["name"], "ci");
        assert_eq!(serde_json::from_value::<Event>(body).unwrap(), event);
        assert_eq!(EVENT_TYPES.len(), 12);
        for (name, _) in EVENT_TYPES {
            assert!(data_schema(name).is_some(), "{name} has no documented data");
        }
        assert!(!is_known_type("invoice.deleted"));
    }
}
