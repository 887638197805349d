-- The ledger splits in two, so that keeping it costs the same every day however much
-- arrives, and nothing is ever deleted row by row:
--
-- * `usage_event_ids`: what deduplication needs, one 16-byte key per accepted event id,
--   kept for the dedup window. Its partitions are a ring of generations; the oldest is
--   emptied with TRUNCATE once every key in it is older than the window.
-- * `usage_batches`: whole events, a row per batch, only until the relay has copied them
--   to ClickHouse. Its partitions are a ring of slots; a slot that is not being written
--   and whose rows are all relayed is emptied with TRUNCATE. The view `usage_events`
--   shows them an event per row.
--
-- `usage_ledger_clock` names the generation and the slot that ingest writes into; the
-- relay's maintenance moves both on (see crates/metering/src/retention.rs).

SELECT set_config('app.system', 'on', true);

-- The dedup key of an event id: the first 16 bytes of its SHA-256. With the tenant, it
-- stands for the id; a chance collision between two ids of one tenant is about 2^-64
-- likely at 2^32 ids in one window.
CREATE FUNCTION usage_event_key(event_id text) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT encode(substring(sha256(convert_to(event_id, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid $$;

CREATE TABLE usage_ledger_clock (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The generation that takes new keys, and when it began taking them.
    dedup_slot         smallint NOT NULL CHECK (dedup_slot BETWEEN 0 AND 3),
    dedup_started_at   timestamptz NOT NULL,
    -- The slot that takes new events, and when it began taking them.
    queue_slot         smallint NOT NULL CHECK (queue_slot BETWEEN 0 AND 7),
    queue_started_at   timestamptz NOT NULL
);
INSERT INTO usage_ledger_clock (dedup_slot, dedup_started_at, queue_slot, queue_started_at)
VALUES (0, now(), 0, now());

-- Per generation: the latest moment a key in it can have been first seen (NULL while it
-- takes keys, or when empty). It may be emptied once that is a whole window ago.
CREATE TABLE usage_dedup_slots (
    slot          smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 3),
    last_key_at   timestamptz
);
INSERT INTO usage_dedup_slots (slot) SELECT generate_series(0, 3);

CREATE TABLE usage_event_ids (
    tenant_id  uuid NOT NULL,
    key        uuid NOT NULL,
    slot       smallint NOT NULL,
    PRIMARY KEY (tenant_id, key, slot)
) PARTITION BY LIST (slot);

ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
ALTER INDEX usage_events_pkey RENAME TO usage_events_unpartitioned_pkey;
ALTER INDEX usage_events_ledger_idx RENAME TO usage_events_unpartitioned_ledger_idx;

CREATE SEQUENCE usage_batches_ledger_seq AS bigint;
SELECT setval('usage_batches_ledger_seq',
              coalesce((SELECT max(ledger_seq) FROM usage_events_unpartitioned), 0) + 1, false);

-- One row per accepted batch, holding its new events side by side in arrays: a batch
-- costs one row and two index entries however many events it brings.
CREATE TABLE usage_batches (
    slot          smallint NOT NULL,
    tenant_id     uuid NOT NULL,
    -- The billing period the events were metered in; invoices sum by it.
    period_start  timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    -- Relay position, as before: the inserting transaction's id, then insertion order.
    -- The relay only reads rows whose transaction is older than every running one, so a
    -- transaction that commits late can never be skipped.
    ledger_xid    bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    ledger_seq    bigint NOT NULL DEFAULT nextval('usage_batches_ledger_seq'),
    events        integer NOT NULL CHECK (events > 0),
    event_ids     text[] COLLATE "C" NOT NULL,
    metrics       text[] NOT NULL,
    -- Any u64 each: numeric, because bigint stops at 2^63 - 1.
    event_values  numeric[] NOT NULL,
    -- When each usage happened (client-supplied or arrival), whole seconds.
    event_times   timestamptz[] NOT NULL,
    CHECK (cardinality(event_ids) = events AND cardinality(metrics) = events
           AND cardinality(event_values) = events AND cardinality(event_times) = events)
) PARTITION BY LIST (slot);
ALTER SEQUENCE usage_batches_ledger_seq OWNED BY usage_batches.ledger_seq;
-- Short-lived and read once: not worth compressing on the ingest path.
ALTER TABLE usage_batches ALTER COLUMN event_ids SET STORAGE EXTERNAL,
                          ALTER COLUMN metrics SET STORAGE EXTERNAL,
                          ALTER COLUMN event_values SET STORAGE EXTERNAL,
                          ALTER COLUMN event_times SET STORAGE EXTERNAL;
-- The relay's order, and a tenant's batches past a position (reads of what the relay
-- has not copied yet, export, erasure).
CREATE INDEX usage_batches_ledger_idx ON usage_batches (ledger_xid, ledger_seq);
CREATE INDEX usage_batches_tenant_idx ON usage_batches (tenant_id, ledger_xid, ledger_seq);

DO $$
BEGIN
    FOR slot IN 0..3 LOOP
        EXECUTE format('CREATE TABLE usage_event_ids_%s PARTITION OF usage_event_ids FOR VALUES IN (%s)', slot, slot);
        PERFORM enable_tenant_isolation(format('usage_event_ids_%s', slot)::regclass, 'tenant_id');
        EXECUTE format('GRANT SELECT, INSERT, DELETE, TRUNCATE ON usage_event_ids_%s TO saas_app', slot);
    END LOOP;
    FOR slot IN 0..7 LOOP
        EXECUTE format('CREATE TABLE usage_batches_%s PARTITION OF usage_batches FOR VALUES IN (%s)', slot, slot);
        PERFORM enable_tenant_isolation(format('usage_batches_%s', slot)::regclass, 'tenant_id');
        EXECUTE format('GRANT SELECT, INSERT, DELETE, TRUNCATE ON usage_batches_%s TO saas_app', slot);
    END LOOP;
END
$$;

-- What was metered before: its ids go into the first generation, its events into the
-- first slot, a batch row per old transaction and side of the relay's cursor (a
-- transaction the relay was part way through becomes two rows), each at the position of
-- its last event: what was relayed stays at or below the cursor, the rest above it.
INSERT INTO usage_event_ids (tenant_id, key, slot)
SELECT tenant_id, usage_event_key(event_id), 0 FROM usage_events_unpartitioned;
INSERT INTO usage_batches (slot, tenant_id, period_start, ingested_at, ledger_xid, ledger_seq,
                           events, event_ids, metrics, event_values, event_times)
SELECT 0, tenant_id, period_start, min(ingested_at), ledger_xid, max(ledger_seq), count(*),
       array_agg(event_id ORDER BY ledger_seq), array_agg(metric ORDER BY ledger_seq),
       array_agg(value ORDER BY ledger_seq), array_agg(event_time ORDER BY ledger_seq)
FROM usage_events_unpartitioned
GROUP BY tenant_id, period_start, ledger_xid,
         (ledger_xid, ledger_seq) <= (SELECT ledger_xid, ledger_seq FROM usage_relay_cursor);
DROP TABLE usage_events_unpartitioned;

-- The ledger's events one per row, for reading.
CREATE VIEW usage_events WITH (security_invoker = true) AS
SELECT b.tenant_id, e.event_id, e.metric, e.value, e.event_time, b.period_start,
       b.ingested_at, b.ledger_xid, b.ledger_seq
FROM usage_batches b,
     unnest(b.event_ids, b.metrics, b.event_values, b.event_times)
         AS e(event_id, metric, value, event_time);

SELECT enable_tenant_isolation('usage_batches', 'tenant_id');
SELECT enable_tenant_isolation('usage_event_ids', 'tenant_id');
GRANT SELECT, INSERT, DELETE ON usage_batches, usage_event_ids TO saas_app;
GRANT SELECT ON usage_events TO saas_app;
GRANT USAGE ON SEQUENCE usage_batches_ledger_seq TO saas_app;
GRANT SELECT, UPDATE ON usage_ledger_clock, usage_dedup_slots TO saas_app;
