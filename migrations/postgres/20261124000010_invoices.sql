-- Invoices: one per tenant and billing period (the unique key makes a re-run or two
-- overlapping runs harmless), with the lines the rating code produced. Kept after
-- erasure for the legal retention period; the only personal data, the billing snapshot
-- of name and email, is stripped then.
CREATE TABLE invoices (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    plan_code       text NOT NULL REFERENCES plans (code),
    currency        text NOT NULL,
    total           bigint NOT NULL CHECK (total >= 0),
    status          text NOT NULL CHECK (status IN ('open', 'paid', 'uncollectible', 'void')),
    -- Who was billed, as it stood when the invoice was made (personal data).
    billed_name     text,
    billed_email    text,
    stripe_invoice_id text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz,
    CONSTRAINT invoices_one_per_period UNIQUE (tenant_id, period_start)
);
SELECT enable_tenant_isolation('invoices', 'tenant_id');

CREATE TABLE invoice_lines (
    invoice_id   uuid NOT NULL REFERENCES invoices (id),
    tenant_id    uuid NOT NULL,
    position     int NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('base_fee', 'included', 'overage')),
    metric       text,
    tier         int,
    quantity     numeric(20, 0) NOT NULL CHECK (quantity >= 0),
    unit_amount  bigint NOT NULL,
    unit_size    bigint NOT NULL,
    amount       bigint NOT NULL,
    description  text NOT NULL,
    PRIMARY KEY (invoice_id, position)
);
SELECT enable_tenant_isolation('invoice_lines', 'tenant_id');

GRANT SELECT, INSERT, UPDATE ON invoices, invoice_lines TO saas_app;
