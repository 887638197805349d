-- One row per usage event, written by the relay from the Postgres ledger.
--
-- The relay may write a batch more than once (it retries until ClickHouse acknowledges).
-- A replayed row is identical to the original, and ReplacingMergeTree keeps one row per
-- sorting key; every read goes through FINAL (or groups by event_id) so that a
-- not-yet-merged replay is never counted twice.
--
-- Kept to the subset of SQL that ClickHouse 18.16 understands: no TTL, no DateTime64,
-- no LowCardinality.
CREATE TABLE IF NOT EXISTS usage_events
(
    tenant_id   UUID,
    metric      String,
    event_id    String,
    value       UInt64,
    event_time  DateTime,
    -- Position in the Postgres ledger; the same on every replay of the row.
    ledger_seq  UInt64
)
ENGINE = ReplacingMergeTree(ledger_seq)
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, metric, event_time, event_id)
