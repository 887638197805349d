-- Billing periods an invoice run has closed to usage. Every ingest transaction holds
-- its tenant's ingest lock shared (taken with BEGIN) and writes into a period only while
-- the period has no row here. A run inserts the row, then takes the lock exclusively,
-- which waits for every ingest transaction already writing: after that nothing more can
-- land in the period, however late its transaction would have committed, and the run
-- reads a final total. A batch that finds its period closed is metered in the next.
CREATE TABLE usage_period_closures (
    tenant_id     uuid NOT NULL,
    period_start  timestamptz NOT NULL,
    closed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start)
);

SELECT enable_tenant_isolation('usage_period_closures', 'tenant_id');
GRANT SELECT, INSERT ON usage_period_closures TO saas_app;
