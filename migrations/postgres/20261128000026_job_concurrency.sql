-- Jobs sharing a concurrency key (one tenant's state changes, say) run one at a time.
-- A claim looks for a running job of the key, so pending keyed jobs are indexed.
ALTER TABLE jobs ADD COLUMN concurrency_key text;
CREATE INDEX jobs_concurrency_idx ON jobs (concurrency_key)
    WHERE status = 'pending' AND concurrency_key IS NOT NULL;
