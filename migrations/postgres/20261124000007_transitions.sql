-- Tenant transitions: each state change a tenant goes through, taken by a conditional
-- update of tenants.version in the transaction that writes this row, the audit entry
-- and the follow-up job.
CREATE TABLE tenant_transitions (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    kind            text NOT NULL CHECK (kind IN ('plan_change', 'suspension', 'reactivation', 'erasure')),
    from_state      text NOT NULL,
    to_state        text NOT NULL,
    from_plan       text NOT NULL,
    to_plan         text NOT NULL,
    -- Downgrades may wait for the period's end; everything else takes effect now.
    effective       text NOT NULL DEFAULT 'now' CHECK (effective IN ('now', 'period_end')),
    status          text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'scheduled', 'completed', 'failed', 'canceled')),
    failure_reason  text,
    actor           text NOT NULL,
    reason          text,
    request_id      text,
    -- Idempotency-Key of the request and the answer it got, replayed for the same key.
    idempotency_key text,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    CONSTRAINT tenant_transitions_idempotency_key UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX tenant_transitions_tenant_idx ON tenant_transitions (tenant_id, created_at DESC);
SELECT enable_tenant_isolation('tenant_transitions', 'tenant_id');
GRANT SELECT, INSERT, UPDATE ON tenant_transitions TO saas_app;

-- A downgrade waiting for the end of the period: the plan it moves to, and when.
ALTER TABLE tenants
    ADD COLUMN scheduled_plan_code text REFERENCES plans (code),
    ADD COLUMN scheduled_plan_at   timestamptz;
