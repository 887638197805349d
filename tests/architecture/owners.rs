//! Which crate owns each Postgres table: the only crate whose SQL names it. Others call
//! the owner's functions; where a question about another crate's rows must be asked
//! inside a statement (a filter, a claim), the owner publishes a SQL function for it
//! in a migration (`tenant_is_synthetic`, `tenant_address_confirmed`).

pub const OWNERS: &[(&str, &[&str])] = &[
    (
        "tenancy",
        &[
            "tenants",
            "plans",
            "plan_metrics",
            "api_keys",
            "dashboard_sessions",
            "operator_sessions",
            "audit_log",
            "audit_chain_head",
            "payment_leases",
            "rate_limits",
            "readiness_reports",
        ],
    ),
    ("jobs", &["jobs"]),
    ("outbox", &["notifications", "notification_settings"]),
    (
        "webhooks",
        &["webhook_endpoints", "webhook_events", "webhook_deliveries"],
    ),
    (
        "metering",
        &[
            "usage_batches",
            "usage_event_ids",
            "usage_events",
            "usage_counters",
            "usage_dedup_slots",
            "usage_ledger_clock",
            "usage_period_closures",
            "usage_relay_cursor",
            "quota_alerts",
        ],
    ),
    ("billing", &["invoices", "invoice_lines", "stripe_events"]),
    ("onboarding", &["signups", "signup_steps"]),
    (
        "lifecycle",
        &[
            "tenant_transitions",
            "tenant_deletions",
            "winback_campaigns",
        ],
    ),
];

/// Crates outside the service, allowed to read any table, and why.
pub const EXEMPT_CRATES: &[(&str, &str)] = &[(
    "bench",
    "benchmark programs measure the ledger's tables from outside the service",
)];
