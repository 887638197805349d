-- Win-back campaigns: outreach to a suspended tenant (or one that cancelled its paid
-- plan) on a configured schedule, through the notification outbox, until it comes back
-- (won), is erased (ended) or the schedule runs out (exhausted).
CREATE TABLE winback_campaigns (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    reason       text NOT NULL CHECK (reason IN ('suspended', 'cancelled')),
    status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'won', 'ended', 'exhausted')),
    steps_sent   int NOT NULL DEFAULT 0,
    -- The offer made in the later steps, e.g. a coupon code; null until one is made.
    offer_code   text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
CREATE UNIQUE INDEX winback_one_running_per_tenant ON winback_campaigns (tenant_id) WHERE status = 'running';
SELECT enable_tenant_isolation('winback_campaigns', 'tenant_id');
GRANT SELECT, INSERT, UPDATE ON winback_campaigns TO saas_app;
