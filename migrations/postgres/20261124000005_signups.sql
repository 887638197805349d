-- Self-service signups and the steps of their onboarding workflow.
--
-- Signups come before any tenant exists, so they are not tenant-owned; they are read by
-- id with the signer-up's token (only its hash is stored) or by the onboarding worker.
-- The tenant a completed signup provisions has the signup's id, so no tenant column is
-- needed (and none is kept, which keeps this table outside the tenant wall on purpose).
CREATE TABLE signups (
    id                  uuid PRIMARY KEY,
    -- Personal data: cleared by GDPR erasure of the tenant it became.
    email               text NOT NULL,
    company             text NOT NULL,
    plan_code           text NOT NULL REFERENCES plans (code),
    payment_method      text,
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN
                            ('pending', 'payment_processing', 'provisioning', 'completed', 'failed')),
    failure_reason      text,
    -- SHA-256 of the signup token the signer-up reads the signup with.
    token_hash          bytea NOT NULL,
    -- Idempotency-Key: the same key with the same body is the same signup.
    idempotency_key     text CONSTRAINT signups_idempotency_key UNIQUE,
    request_hash        bytea NOT NULL,
    -- The first answer, replayed for the same Idempotency-Key (it holds the token).
    first_response      jsonb,
    stripe_customer_id      text,
    stripe_subscription_id  text,
    -- The tenant's first API key, kept only until the first read after completion.
    api_key_secret      text,
    synthetic           boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz
);

-- A double submission without an Idempotency-Key (a double click, a retried form) must not
-- become a second customer paying twice: one live signup per email and company. A failed
-- signup frees the pair for another try.
CREATE UNIQUE INDEX signups_one_live_per_email_and_company
    ON signups (lower(email), lower(company)) WHERE status <> 'failed';

CREATE TABLE signup_steps (
    signup_id  uuid NOT NULL REFERENCES signups (id),
    name       text NOT NULL,
    status     text NOT NULL CHECK (status IN ('done', 'skipped', 'failed')),
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (signup_id, name)
);

-- Messages to send (welcome mail, quota alerts, win-back), sent by SMTP when configured
-- and otherwise kept here for the operator.
CREATE TABLE notifications (
    id          uuid PRIMARY KEY,
    tenant_id   uuid,
    kind        text NOT NULL,
    recipient   text NOT NULL,
    subject     text NOT NULL,
    body        text NOT NULL,
    dedup_key   text CONSTRAINT notifications_dedup_key UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
SELECT enable_tenant_isolation('notifications', 'tenant_id');

GRANT SELECT, INSERT, UPDATE ON signups, signup_steps TO saas_app;
GRANT SELECT, INSERT, UPDATE ON notifications TO saas_app;

-- The tenant's subscription at the payment provider, for plan changes and cancellation.
ALTER TABLE tenants ADD COLUMN stripe_subscription_id text;
