-- When each tenant next has a billing period to invoice: the end of its oldest period
-- not yet invoiced. The scheduler finds the due tenants through the partial index below
-- instead of reading every tenant each interval; invoice runs move the time on as they
-- invoice. Existing tenants start due at once: the first run sets their true time.
ALTER TABLE tenants ADD COLUMN invoice_due_at timestamptz;
UPDATE tenants SET invoice_due_at = billing_anchor;
ALTER TABLE tenants ALTER COLUMN invoice_due_at SET NOT NULL;

-- Only tenants that are billed: readiness probes never are, provisioning ones have no
-- period yet and erased ones no usage left.
CREATE INDEX tenants_invoice_due_idx ON tenants (invoice_due_at, id)
    WHERE NOT synthetic AND state NOT IN ('provisioning', 'deleted');
