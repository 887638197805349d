-- Stripe as the payment rail: every invoice of ours becomes one Stripe invoice that we
-- compose line by line; Stripe subscriptions are no longer made.
--
-- Base fees are billed in advance: the first period's at signup (a `signup` invoice,
-- paid before the tenant is provisioned), each later period's on the invoice that
-- closes the period before it (a `period` invoice, which also bills that period's usage
-- in arrears and the prorations of its upgrades).
ALTER TABLE invoices ADD COLUMN kind text NOT NULL DEFAULT 'period'
    CHECK (kind IN ('signup', 'period'));
ALTER TABLE invoices DROP CONSTRAINT invoices_one_per_period;
ALTER TABLE invoices ADD CONSTRAINT invoices_one_per_period UNIQUE (tenant_id, kind, period_start);

-- The signup's first invoice at Stripe, paid before provisioning.
ALTER TABLE signups ADD COLUMN stripe_invoice_id text;

-- When a completed plan change took effect: at once, or at the period boundary it was
-- scheduled for (the job that applies it runs a little later). Invoices rate each part
-- of a period under the plan in effect then.
ALTER TABLE tenant_transitions ADD COLUMN effective_at timestamptz;
UPDATE tenant_transitions SET effective_at = completed_at
    WHERE kind = 'plan_change' AND status = 'completed';

-- tenants.stripe_subscription_id and signups.stripe_subscription_id are no longer
-- written. They are kept so that subscriptions made by earlier versions can be found
-- and canceled in Stripe (see "Going live with Stripe" in the README).
COMMENT ON COLUMN tenants.stripe_subscription_id IS
    'no longer written: a Stripe subscription made by an earlier version, to cancel';

-- The period's usage (per metric, from the counters) at the moment a plan change took
-- effect at once: usage before it is rated under the old plan, after it under the new.
ALTER TABLE tenant_transitions ADD COLUMN usage_before jsonb;

-- Why collecting the invoice can never succeed as it stands (Stripe's invoice differs
-- from ours, the total is above what Stripe can charge, the tenant has no customer):
-- set once, shown to operators, and never retried on its own.
ALTER TABLE invoices ADD COLUMN collection_error text;

-- The tenant's payment lease (tenancy::payment_lock): held while invoices of the tenant
-- are composed or charged at Stripe, without a transaction held open meanwhile.
CREATE TABLE payment_leases (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    holder     uuid NOT NULL,
    expires_at timestamptz NOT NULL
);
SELECT enable_tenant_isolation('payment_leases', 'tenant_id');
GRANT SELECT, INSERT, UPDATE, DELETE ON payment_leases TO saas_app;
