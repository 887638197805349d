-- Collecting invoices through Stripe, dunning, and Stripe's webhooks.
--
-- An invoice of a tenant with a Stripe customer starts as `draft`: its collection job
-- pushes it to Stripe (its lines as invoice items, then the invoice), then charges it.
-- A failed charge starts dunning: retries at configured offsets from the first failure,
-- then suspension. `proration` lines are the base-fee adjustments Stripe made for a plan
-- change, copied from the Stripe invoice so that both carry the same lines and total.
ALTER TABLE invoices DROP CONSTRAINT invoices_status_check;
ALTER TABLE invoices ADD CONSTRAINT invoices_status_check
    CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void'));
ALTER TABLE invoices
    ADD COLUMN payment_attempts int NOT NULL DEFAULT 0,
    ADD COLUMN first_failed_at  timestamptz,
    ADD COLUMN next_attempt_at  timestamptz,
    ADD COLUMN last_payment_error text,
    -- `none`, `retrying`, `exhausted` (retries used up) or `hard_decline` (not retried).
    ADD COLUMN dunning text NOT NULL DEFAULT 'none'
        CHECK (dunning IN ('none', 'retrying', 'exhausted', 'hard_decline')),
    -- When dunning suspended the tenant over this invoice: once only, so that an
    -- operator letting the tenant back in without paying is not overruled.
    ADD COLUMN dunning_suspended_at timestamptz,
    -- Set before the first call to Stripe for the invoice: every later push looks up
    -- what an earlier, interrupted one may have made instead of making it again.
    ADD COLUMN push_started_at timestamptz;
CREATE UNIQUE INDEX invoices_stripe_invoice ON invoices (stripe_invoice_id)
    WHERE stripe_invoice_id IS NOT NULL;

ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_kind_check
    CHECK (kind IN ('base_fee', 'included', 'overage', 'proration'));
GRANT DELETE ON invoice_lines TO saas_app;

-- Every Stripe event acted on, by id: a redelivery is recognised and answered without
-- acting twice. Holds no personal data (ids, types and what was done).
CREATE TABLE stripe_events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    object_id   text,
    outcome     text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON stripe_events TO saas_app;
