-- Outbox delivery without a transaction open across the SMTP call: a message is claimed
-- for a while, sent, then marked. Failed attempts wait with growing pauses, so that a
-- relay restarting or greylisting does not use up a message's attempts in seconds.
ALTER TABLE notifications
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN claimed_until   timestamptz;

DROP INDEX notifications_undelivered;
CREATE INDEX notifications_undelivered ON notifications (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
