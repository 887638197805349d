-- The minutes of the usage relayed before they were kept. Grouped by ledger position,
-- so the rows equal those the relay writes for the same batches: running this again,
-- or alongside the relay, adds nothing.
INSERT INTO usage_minutes
SELECT tenant_id, metric, period_start, toStartOfMinute(event_time) AS minute,
       ledger_xid, ledger_seq, count() AS events,
       sum(intDiv(value, 4294967296)) AS high, sum(value % 4294967296) AS low
FROM usage_events FINAL
GROUP BY tenant_id, metric, period_start, minute, ledger_xid, ledger_seq
