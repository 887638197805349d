-- Everything a transition's request asked (plan, `effective`, who may lift a suspension),
-- so that a retry under the same Idempotency-Key is replayed only when it asks the same.
-- Rows from before carry NULL and are compared by kind and plan, as they were.
ALTER TABLE tenant_transitions ADD COLUMN asked text;
