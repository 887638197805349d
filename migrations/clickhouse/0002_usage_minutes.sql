-- Usage per tenant, metric, billing period and minute of event time, one row per ledger
-- batch that brought usage into that minute. Reads of totals and series sum these rows
-- rather than events: a batch of a thousand events in one minute is one row.
--
-- A relay that replays a batch after a crash writes the same rows again (the ledger
-- batch is immutable and the key names it), and the engine keeps one of them: reads
-- use FINAL, so nothing is ever counted twice. Sums are kept in two halves (high and
-- low 32 bits of each value), which cannot wrap however many rows are added up.
CREATE TABLE IF NOT EXISTS usage_minutes
(
    tenant_id     UUID,
    metric        String,
    period_start  DateTime,
    minute        DateTime,
    ledger_xid    UInt64,
    ledger_seq    UInt64,
    events        UInt64,
    high          UInt64,
    low           UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, metric, period_start, minute, ledger_xid, ledger_seq)
