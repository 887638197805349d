-- Delivery bookkeeping for the notification outbox. A message is sent at least once:
-- a crash between the SMTP answer and the commit sends it again, with the same
-- Message-ID (derived from the row id) so that mail systems can drop the twin.
ALTER TABLE notifications
    ADD COLUMN attempts   int NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    -- Set when the SMTP server refused the message for good, or attempts ran out.
    ADD COLUMN failed_at  timestamptz;

CREATE INDEX notifications_undelivered ON notifications (created_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
