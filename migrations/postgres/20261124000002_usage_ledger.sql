-- The usage ledger: every accepted event, durable before it is acknowledged, plus the
-- per-period counters that quotas are enforced against.

-- One row per accepted event. The primary key makes an event id count once per tenant:
-- a retry, a concurrent twin or a twin in the same batch all hit it.
CREATE TABLE usage_events (
    tenant_id     uuid NOT NULL,
    event_id      text NOT NULL,
    metric        text NOT NULL CHECK (metric IN ('queries', 'tokens', 'bytes')),
    -- Any u64: numeric, because bigint stops at 2^63 - 1.
    value         numeric(20, 0) NOT NULL CHECK (value >= 0 AND value <= 18446744073709551615),
    -- When the usage happened (client-supplied or arrival), whole seconds.
    event_time    timestamptz NOT NULL,
    -- The billing period the event was metered in; invoices sum by it.
    period_start  timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    -- Relay position: the inserting transaction's id, then insertion order. The relay only
    -- reads rows whose transaction is older than every running one, so a transaction
    -- that commits late can never be skipped.
    ledger_xid    bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    ledger_seq    bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX usage_events_ledger_idx ON usage_events (ledger_xid, ledger_seq);
-- For pruning events past the deduplication window. BRIN: rows arrive in time order, and
-- a BRIN index costs next to nothing on the insert path.
CREATE INDEX usage_events_ingested_idx ON usage_events USING brin (ingested_at);

-- Usage per tenant, period and metric, updated in the same transaction as the events.
CREATE TABLE usage_counters (
    tenant_id     uuid NOT NULL,
    period_start  timestamptz NOT NULL,
    metric        text NOT NULL CHECK (metric IN ('queries', 'tokens', 'bytes')),
    -- Unbounded on purpose: inside the ingest transaction the counter may briefly hold a
    -- total past 2^64 - 1 (or past a hard limit); the service then rolls back, so no
    -- such total is ever committed.
    used          numeric NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (tenant_id, period_start, metric)
);

-- Crossings of 80% and 100% of a quota, once per tenant, period, metric and threshold.
CREATE TABLE quota_alerts (
    tenant_id          uuid NOT NULL,
    period_start       timestamptz NOT NULL,
    metric             text NOT NULL,
    threshold_percent  integer NOT NULL CHECK (threshold_percent IN (80, 100)),
    used               numeric(20, 0) NOT NULL,
    quota              numeric(20, 0) NOT NULL,
    crossed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start, metric, threshold_percent)
);

-- How far the relay has copied the ledger into ClickHouse. One row; whoever holds its
-- lock is the one relay at work.
CREATE TABLE usage_relay_cursor (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    ledger_xid  bigint NOT NULL,
    ledger_seq  bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO usage_relay_cursor (ledger_xid, ledger_seq) VALUES (0, 0);

SELECT enable_tenant_isolation('usage_events', 'tenant_id');
SELECT enable_tenant_isolation('usage_counters', 'tenant_id');
SELECT enable_tenant_isolation('quota_alerts', 'tenant_id');

-- Events are never updated; the prune job deletes relayed ones past the dedup window.
GRANT SELECT, INSERT, DELETE ON usage_events TO saas_app;
GRANT SELECT, INSERT, UPDATE ON usage_counters TO saas_app;
GRANT SELECT, INSERT ON quota_alerts TO saas_app;
GRANT SELECT, UPDATE ON usage_relay_cursor TO saas_app;
