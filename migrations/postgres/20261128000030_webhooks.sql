-- Outbound webhooks: endpoints a tenant registers, the events that happened to it, and
-- one delivery per event and subscribed endpoint. Events and deliveries are written in
-- the transaction of the change that caused them (a rolled-back change sends nothing);
-- each delivery is then carried by a job of the durable queue.

CREATE TABLE webhook_endpoints (
    id                     uuid PRIMARY KEY,
    tenant_id              uuid NOT NULL REFERENCES tenants (id),
    url                    text NOT NULL CHECK (length(url) <= 2048),
    -- The event types it receives; '*' for all of them.
    events                 text[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 64),
    description            text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    enabled                boolean NOT NULL DEFAULT true,
    -- Why it was turned off by the service (it kept failing); NULL when on, or turned
    -- off by the tenant.
    disabled_reason        text,
    -- The signing secret (`whsec_` and base64). Kept readable: every delivery signs
    -- with it. During a rotation the previous one signs too, until `previous_until`.
    secret                 text NOT NULL,
    previous_secret        text,
    previous_until         timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, created_at);

CREATE TABLE webhook_events (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    type        text NOT NULL,
    -- The exact bytes every delivery sends and signs, so redeliveries are identical.
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_tenant_idx ON webhook_events (tenant_id, created_at);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Each redelivery asked for starts a new round of attempts.
    round            integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_attempt_at  timestamptz,
    -- The receiver's HTTP status, or NULL when no answer came.
    last_status      integer,
    last_error       text,
    -- At most the first 256 characters of the last answer's body.
    last_response    text CHECK (length(last_response) <= 256),
    succeeded_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

SELECT enable_tenant_isolation('webhook_endpoints', 'tenant_id');
SELECT enable_tenant_isolation('webhook_events', 'tenant_id');
SELECT enable_tenant_isolation('webhook_deliveries', 'tenant_id');
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_events, webhook_deliveries
    TO saas_app;
