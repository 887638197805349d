-- GDPR erasure. What stays of an erased tenant: its tenants row (id, plan, state
-- `deleted`, no name or email), invoices stripped of personal data for the legal
-- retention period, the audit log (which never holds personal data) and this record.
CREATE TABLE tenant_deletions (
    tenant_id                uuid PRIMARY KEY REFERENCES tenants (id),
    transition_id            uuid NOT NULL,
    requested_by             text NOT NULL,
    requested_at             timestamptz NOT NULL,
    completed_at             timestamptz,
    -- What was removed, as counts only.
    postgres_rows_deleted    bigint,
    clickhouse_events_deleted bigint,
    stripe_customer_deleted  boolean
);
SELECT enable_tenant_isolation('tenant_deletions', 'tenant_id');
GRANT SELECT, INSERT, UPDATE ON tenant_deletions TO saas_app;

GRANT DELETE ON usage_counters, quota_alerts, notifications TO saas_app;
