-- One row per usage event, copied by the relay from the Postgres ledger.
--
-- The relay may write a batch more than once (it retries until ClickHouse acknowledges,
-- and may crash before recording that it did). A replayed row is identical to the
-- original and ReplacingMergeTree keeps one row per sorting key, and every read uses
-- FINAL, so a replay that is not merged yet is never counted twice.
--
-- Kept to the SQL that ClickHouse 18.16 understands: no TTL, no DateTime64, no
-- LowCardinality.
CREATE TABLE IF NOT EXISTS usage_events
(
    tenant_id     UUID,
    metric        String,
    event_id      String,
    value         UInt64,
    event_time    DateTime,
    -- The billing period the event was metered in; invoices sum by it.
    period_start  DateTime,
    -- Position in the Postgres ledger, the same on every replay of the row.
    ledger_xid    UInt64,
    ledger_seq    UInt64
)
ENGINE = ReplacingMergeTree(ledger_seq)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, metric, event_time, event_id)
