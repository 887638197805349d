-- Whether the tenant may lift a suspension itself (POST /v1/tenant/reactivation): yes
-- for one over an unpaid bill, once it pays; no for one an operator imposed for another
-- reason, which only an operator lifts.
ALTER TABLE tenant_transitions ADD COLUMN tenant_may_reactivate boolean NOT NULL DEFAULT false;
