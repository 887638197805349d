-- The audit log becomes a hash chain: every entry carries the hash of the one before it,
-- so changing or removing any entry (even by someone who can bypass the append-only
-- trigger) breaks every hash after it, and the verification finds where.

ALTER TABLE audit_log
    ADD COLUMN chain_seq  bigint,
    ADD COLUMN prev_hash  bytea,
    ADD COLUMN hash       bytea;

-- The chain's head: its length and last hash. Not tenant-owned: every transaction that
-- audits, whoever it acts for, appends to the same chain. Locking this row serialises
-- appends, which is what gives the chain one order.
CREATE TABLE audit_chain_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    chain_seq  bigint NOT NULL,
    hash       bytea NOT NULL
);
INSERT INTO audit_chain_head (chain_seq, hash) VALUES (0, sha256(''::bytea));

-- The hash of one entry given the previous hash. Used when appending and when verifying.
CREATE FUNCTION audit_entry_hash(
    prev_hash bytea, chain_seq bigint, tenant_id uuid, actor text, action text,
    from_state text, to_state text, reason text, request_id text, details jsonb,
    created_at timestamptz
) RETURNS bytea
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT sha256(prev_hash || convert_to(concat_ws(E'\x1f',
        chain_seq::text, coalesce(tenant_id::text, ''), actor, action,
        coalesce(from_state, ''), coalesce(to_state, ''), coalesce(reason, ''),
        coalesce(request_id, ''), details::text,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')), 'UTF8'))
    $$;

CREATE FUNCTION audit_log_chain() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    head audit_chain_head%ROWTYPE;
BEGIN
    SELECT * INTO head FROM audit_chain_head FOR UPDATE;
    NEW.chain_seq := head.chain_seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := audit_entry_hash(NEW.prev_hash, NEW.chain_seq, NEW.tenant_id, NEW.actor,
        NEW.action, NEW.from_state, NEW.to_state, NEW.reason, NEW.request_id, NEW.details,
        NEW.created_at);
    UPDATE audit_chain_head SET chain_seq = NEW.chain_seq, hash = NEW.hash;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();

-- Entries written before the chain existed are chained now, in id order.
DO $$
DECLARE
    entry record;
BEGIN
    PERFORM set_config('app.system', 'on', true);
    ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
    FOR entry IN SELECT id FROM audit_log ORDER BY id LOOP
        UPDATE audit_log a SET chain_seq = h.chain_seq + 1, prev_hash = h.hash,
            hash = audit_entry_hash(h.hash, h.chain_seq + 1, a.tenant_id, a.actor, a.action,
                a.from_state, a.to_state, a.reason, a.request_id, a.details, a.created_at)
        FROM audit_chain_head h WHERE a.id = entry.id;
        UPDATE audit_chain_head h SET chain_seq = a.chain_seq, hash = a.hash
        FROM audit_log a WHERE a.id = entry.id;
    END LOOP;
    ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;
END
$$;

ALTER TABLE audit_log
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL,
    ADD CONSTRAINT audit_log_chain_seq_key UNIQUE (chain_seq);

GRANT SELECT, UPDATE ON audit_chain_head TO saas_app;
