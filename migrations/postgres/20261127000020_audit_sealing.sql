-- The audit chain leaves the write path. An entry is appended without its chain fields;
-- a sealer (a worker of the service, and every operator read of the log) then gives the
-- waiting entries their place and hash in one short transaction under the chain head's
-- lock. Writers no longer wait for each other on that lock: one tenant looping audited
-- writes cannot slow down another's transitions, provisioning or erasure. Entries wait
-- about a second to be sealed; verification covers every sealed entry, as before.
DROP TRIGGER audit_log_chain ON audit_log;
DROP FUNCTION audit_log_chain();

ALTER TABLE audit_log
    ALTER COLUMN chain_seq DROP NOT NULL,
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL;
CREATE INDEX audit_log_unsealed_idx ON audit_log (id) WHERE hash IS NULL;

-- Still append-only: no delete, no truncate, and the only update is the sealing of an
-- entry that has no hash yet, which may set its chain fields and nothing else.
DROP TRIGGER audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only
    BEFORE DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change();

CREATE FUNCTION audit_log_seal_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.tenant_id, NEW.actor, NEW.action, NEW.from_state, NEW.to_state,
            NEW.reason, NEW.request_id, NEW.details, NEW.created_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.tenant_id, OLD.actor, OLD.action, OLD.from_state, OLD.to_state,
            OLD.reason, OLD.request_id, OLD.details, OLD.created_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_seal_only
    BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_seal_only();

-- Seals up to `batch` waiting entries in id order; returns how many.
CREATE FUNCTION audit_seal(batch integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    head audit_chain_head%ROWTYPE;
    entry audit_log%ROWTYPE;
    sealed integer := 0;
    next_hash bytea;
BEGIN
    SELECT * INTO head FROM audit_chain_head FOR UPDATE;
    FOR entry IN SELECT * FROM audit_log WHERE hash IS NULL ORDER BY id LIMIT batch LOOP
        head.chain_seq := head.chain_seq + 1;
        next_hash := audit_entry_hash(head.hash, head.chain_seq, entry.tenant_id, entry.actor,
            entry.action, entry.from_state, entry.to_state, entry.reason, entry.request_id,
            entry.details, entry.created_at);
        UPDATE audit_log SET chain_seq = head.chain_seq, prev_hash = head.hash, hash = next_hash
            WHERE id = entry.id;
        head.hash := next_hash;
        sealed := sealed + 1;
    END LOOP;
    UPDATE audit_chain_head SET chain_seq = head.chain_seq, hash = head.hash;
    RETURN sealed;
END
$$;

GRANT UPDATE (chain_seq, prev_hash, hash) ON audit_log TO saas_app;
