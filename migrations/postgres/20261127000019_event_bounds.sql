-- The rows a tenant may store are bounded per plan, not only the values: an event of
-- value 0 passes every value quota, so without this even a free tenant could store
-- events without end.
SELECT set_config('app.system', 'on', true);

-- Events per tenant, period and metric, counted with the values in the same statement.
ALTER TABLE usage_counters ADD COLUMN events bigint NOT NULL DEFAULT 0 CHECK (events >= 0);
UPDATE usage_counters c SET events = (
    SELECT count(*) FROM usage_events e
    WHERE e.tenant_id = c.tenant_id AND e.period_start = c.period_start AND e.metric = c.metric
);

-- Events a tenant may meter per metric and billing period, whatever their values.
ALTER TABLE plan_metrics ADD COLUMN event_limit bigint CHECK (event_limit > 0);
UPDATE plan_metrics SET event_limit = CASE plan_code
    WHEN 'free' THEN 100000
    WHEN 'starter' THEN 2000000
    WHEN 'pro' THEN 20000000
    ELSE 200000000
END;
ALTER TABLE plan_metrics ALTER COLUMN event_limit SET NOT NULL;

-- The export reads the ledger in event id order, merged with ClickHouse's: bytewise
-- order on both sides.
ALTER TABLE usage_events ALTER COLUMN event_id TYPE text COLLATE "C";
