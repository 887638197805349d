-- The tenant store: plans, tenants, API keys and the audit log.
--
-- Row-level security is the second wall behind the tenant filter every query carries.
-- A transaction says whose data it may touch with
--     set_config('app.tenant_id', '<uuid>', true)   -- one tenant's request
--     set_config('app.system', 'on', true)          -- a worker or operator, explicitly
-- and a transaction that says neither sees no tenant rows at all.

CREATE FUNCTION app_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE FUNCTION app_is_system() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('app.system', true), '') = 'on' $$;

-- Turns on the wall for one tenant-owned table: row-level security enabled and forced
-- (so that even the owner obeys), with the one policy every such table has. The column
-- names the tenant (`tenant_id`, or `id` on the tenants table itself).
CREATE FUNCTION enable_tenant_isolation(target regclass, tenant_column name) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s '
        'USING (app_is_system() OR %I = app_tenant_id()) '
        'WITH CHECK (app_is_system() OR %I = app_tenant_id())',
        target, tenant_column, tenant_column);
END
$$;

-- The plan catalogue is public and shared, so it is not tenant-owned.
CREATE TABLE plans (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{0,31}$'),
    name        text NOT NULL,
    currency    text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- Flat fee per billing period, in minor units.
    base_fee    bigint NOT NULL CHECK (base_fee >= 0),
    -- Orders plans from smallest to largest: moving to a higher rank is an upgrade.
    rank        integer NOT NULL UNIQUE
);

CREATE TABLE plan_metrics (
    plan_code   text NOT NULL REFERENCES plans (code),
    metric      text NOT NULL CHECK (metric IN ('queries', 'tokens', 'bytes')),
    -- Units per period that the base fee covers.
    included    bigint NOT NULL CHECK (included >= 0),
    -- Hard cap per period; NULL means usage past `included` is billed as overage.
    hard_limit  bigint CHECK (hard_limit >= included),
    -- Overage prices are quoted per this many units (per 1,000 queries, per GiB, ...).
    unit_size   bigint NOT NULL DEFAULT 1 CHECK (unit_size > 0),
    -- Graduated overage tiers, ascending: [{"up_to": <overage units> | null, "unit_amount": <minor units per unit_size>}].
    tiers       jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (plan_code, metric)
);

CREATE TABLE tenants (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL,
    -- Personal data: cleared by GDPR erasure.
    email               text,
    state               text NOT NULL CHECK (state IN
                            ('provisioning', 'active', 'upgrading', 'downgrading', 'suspended', 'deleted')),
    plan_code           text NOT NULL REFERENCES plans (code),
    -- Billing periods follow one another from the anchor (activation) at this cycle:
    -- '<n>mo' calendar months or '<n>s' seconds. The current period is computed.
    billing_anchor      timestamptz NOT NULL,
    billing_cycle       text NOT NULL CHECK (billing_cycle ~ '^[1-9][0-9]*(mo|s)$'),
    -- Bumped by every state change; transitions are conditional updates on it.
    version             bigint NOT NULL DEFAULT 0,
    -- Readiness probes: never billed, never listed to operators.
    synthetic           boolean NOT NULL DEFAULT false,
    stripe_customer_id  text CONSTRAINT tenants_stripe_customer_id_key UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenants_state_idx ON tenants (state, id);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    name            text NOT NULL,
    -- The first characters of the secret, enough for a person to tell keys apart.
    display_prefix  text NOT NULL,
    -- SHA-256 of the secret. Keys are 256 random bits, so a fast hash is enough and
    -- authentication stays a single index lookup.
    secret_hash     bytea NOT NULL CONSTRAINT api_keys_secret_hash_key UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, id);

-- Append-only: the service may insert and read, never change or remove.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL for operator actions that concern no single tenant.
    tenant_id   uuid,
    -- Who acted: 'operator', 'tenant:<api key id>', 'system:<worker>'. Never personal data.
    actor       text NOT NULL,
    action      text NOT NULL,
    from_state  text,
    to_state    text,
    reason      text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id);

CREATE FUNCTION audit_log_reject_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change();

SELECT enable_tenant_isolation('tenants', 'id');
SELECT enable_tenant_isolation('api_keys', 'tenant_id');
SELECT enable_tenant_isolation('audit_log', 'tenant_id');

GRANT USAGE ON SCHEMA public TO saas_app;
GRANT SELECT ON plans, plan_metrics TO saas_app;
GRANT SELECT, INSERT, UPDATE ON tenants TO saas_app;
GRANT SELECT, INSERT, UPDATE ON api_keys TO saas_app;
GRANT SELECT, INSERT ON audit_log TO saas_app;

-- The catalogue. Prices are minor units (USD cents) per `unit_size` units of overage.
INSERT INTO plans (code, name, currency, base_fee, rank) VALUES
    ('free',       'Free',       'usd',     0, 0),
    ('starter',    'Starter',    'usd',  2900, 1),
    ('pro',        'Pro',        'usd', 19900, 2),
    ('enterprise', 'Enterprise', 'usd', 99900, 3);

INSERT INTO plan_metrics (plan_code, metric, included, hard_limit, unit_size, tiers) VALUES
    ('free',       'queries',       10000,        10000,    1, '[]'),
    ('free',       'tokens',       100000,       100000,    1, '[]'),
    ('free',       'bytes',    1073741824,   1073741824,    1, '[]'),
    ('starter',    'queries',      100000,         NULL, 1000, '[{"up_to": null, "unit_amount": 50}]'),
    ('starter',    'tokens',      2000000,         NULL, 1000, '[{"up_to": null, "unit_amount": 2}]'),
    ('starter',    'bytes',   10737418240,  21474836480, 1073741824, '[{"up_to": null, "unit_amount": 25}]'),
    ('pro',        'queries',     1000000,         NULL, 1000,
        '[{"up_to": 9000000, "unit_amount": 40}, {"up_to": null, "unit_amount": 25}]'),
    ('pro',        'tokens',     20000000,         NULL, 1000,
        '[{"up_to": 80000000, "unit_amount": 2}, {"up_to": null, "unit_amount": 1}]'),
    ('pro',        'bytes',  107374182400,         NULL, 1073741824, '[{"up_to": null, "unit_amount": 20}]'),
    ('enterprise', 'queries',    10000000,         NULL, 1000, '[{"up_to": null, "unit_amount": 20}]'),
    ('enterprise', 'tokens',    200000000,         NULL, 1000, '[{"up_to": null, "unit_amount": 1}]'),
    ('enterprise', 'bytes', 1099511627776,         NULL, 1073741824, '[{"up_to": null, "unit_amount": 10}]');
