-- Mail goes only to addresses their owners confirmed. A signup's first mail asks the
-- recipient to confirm (and carries nothing the signer-up wrote, so signups cannot be
-- used to send someone else a message); every other mail to a tenant waits for the
-- confirmation. At most three confirmation mails go to one address a day, however
-- many signups name it.
ALTER TABLE tenants
    ADD COLUMN email_verified_at timestamptz,
    -- SHA-256 of the confirmation token, until it is used.
    ADD COLUMN email_verification_hash bytea;
CREATE UNIQUE INDEX tenants_email_verification_hash ON tenants (email_verification_hash)
    WHERE email_verification_hash IS NOT NULL;

-- Tenants from before have been mailed at their address all along: it stays in use.
SELECT set_config('app.system', 'on', true);
UPDATE tenants SET email_verified_at = created_at WHERE email IS NOT NULL;

CREATE INDEX notifications_confirmations_by_recipient
    ON notifications (lower(recipient), created_at) WHERE kind = 'email_verification';
