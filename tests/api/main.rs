//! API integration tests, one binary so that they link once.

mod admin;
mod api_keys;
mod audit_chain;
mod auth;
mod billing_runs;
mod crash_recovery;
mod dashboard;
mod erasure;
mod errors;
mod giving_up;
mod health;
mod invoices;
mod job_queue;
mod lifecycle;
mod onboarding;
mod outbox;
mod payments;
mod readiness;
mod row_level_security;
mod usage_ingest;
mod usage_outage;
mod usage_prune;
mod usage_quota;
mod usage_validation;
mod winback;
