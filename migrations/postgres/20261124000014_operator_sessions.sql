-- Browser sessions of the operator view: the operator token exchanged for a cookie that
-- can only read (/v1/admin GET requests). Only the hash of the cookie's token is kept.
CREATE TABLE operator_sessions (
    token_hash  bytea PRIMARY KEY,
    -- Which operator token opened it: changing the token ends its sessions.
    operator_token_fingerprint bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
GRANT SELECT, INSERT, DELETE ON operator_sessions TO saas_app;
