-- Browser sessions of the dashboard: an API key exchanged for a cookie. Only the hash of
-- the cookie's token is stored; a session dies with its key (revoked) or its time.
CREATE TABLE dashboard_sessions (
    token_hash  bytea PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    api_key_id  uuid NOT NULL REFERENCES api_keys (id),
    -- Sent back by the page in X-CSRF-Token on every request that changes something.
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
SELECT enable_tenant_isolation('dashboard_sessions', 'tenant_id');
GRANT SELECT, INSERT, DELETE ON dashboard_sessions TO saas_app;
