-- Which kinds of mail a tenant does not want (quota alerts, payment failures, ...). A
-- kind listed here is not written to the outbox for the tenant at all.
CREATE TABLE notification_settings (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    muted       text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT enable_tenant_isolation('notification_settings', 'tenant_id');
GRANT SELECT, INSERT, UPDATE, DELETE ON notification_settings TO saas_app;
