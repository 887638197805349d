-- Signups keep no usable secret, and sit under the tenant wall.
--
-- The first API key is made when a signup is accepted: the store keeps its hash and
-- display prefix (the provisioning job creates the key from them) and the key sealed
-- under the signup token, which only the signer-up holds. A read may show it again for
-- ten minutes after the first one; the first read after that erases it.
ALTER TABLE signups
    ADD COLUMN first_key_hash     bytea,
    ADD COLUMN first_key_prefix   text,
    ADD COLUMN first_key_sealed   bytea,
    ADD COLUMN first_key_shown_at timestamptz;

-- An Idempotency-Key is scoped to the client address that sent it: the store keeps a
-- digest of (address, key) and the signup token sealed under that pair, so the same key
-- from elsewhere is another request and never receives the token.
ALTER TABLE signups
    ADD COLUMN idempotency_scope bytea CONSTRAINT signups_idempotency_scope UNIQUE,
    ADD COLUMN token_sealed      bytea;

-- Replays under the old, global keys handed out a token stored in plaintext: they end
-- here (a retry of one now meets the one-live-signup rule and answers 409).
UPDATE signups SET first_response = NULL, idempotency_key = NULL
    WHERE first_response IS NOT NULL OR idempotency_key IS NOT NULL;
-- A plaintext first key unread for a day is not going to be read; a newer one is kept
-- for its first read, as promised when it was made.
UPDATE signups SET api_key_secret = NULL
    WHERE api_key_secret IS NOT NULL AND completed_at < now() - interval '1 day';

-- A signup's id is the id of the tenant it becomes: its rows are that tenant's.
SELECT enable_tenant_isolation('signups', 'id');
SELECT enable_tenant_isolation('signup_steps', 'signup_id');
