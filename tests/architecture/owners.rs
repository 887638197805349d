//! Which crate owns each Postgres table: the only crate whose SQL names it.

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
        ],
    ),
    ("jobs", &["jobs"]),
    ("outbox", &["notifications"]),
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

/// Trespasses that exist today, each with what replaces it. The check fails on any
/// other, and on any of these once it is gone, so the list only shrinks.
pub const KNOWN_TRESPASSES: &[(&str, &str, &str)] = &[
    (
        "gateway",
        "invoices",
        "operator overview: a billing summary function",
    ),
    (
        "gateway",
        "tenant_transitions",
        "operator overview: a lifecycle summary function",
    ),
    (
        "gateway",
        "tenants",
        "operator overview: a tenancy summary, and the probes' filter below",
    ),
    (
        "lifecycle",
        "tenants",
        "win-back list: leaves readiness probes out with a join on tenants.synthetic",
    ),
    (
        "outbox",
        "tenants",
        "delivery: sends only to an address its tenant confirmed, checked in the claim",
    ),
];
