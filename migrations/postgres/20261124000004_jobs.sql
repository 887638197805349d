-- The durable job queue behind onboarding, invoice runs, dunning, erasure and win-back.
--
-- A job is claimed by taking a lease (locked_until) with FOR UPDATE SKIP LOCKED; a
-- worker that dies simply stops renewing it, and the job becomes claimable again when
-- the lease runs out. Retries are durable: a failure moves run_at forward. Jobs that
-- exhaust their attempts stay, as 'dead', for operators to see.
CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL,
    payload       jsonb NOT NULL,
    -- At most one job per (kind, dedup_key), ever: enqueueing "invoice tenant T for
    -- period P" twice yields one job.
    dedup_key     text,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dead')),
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL CHECK (max_attempts > 0),
    locked_by     text,
    locked_until  timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    CONSTRAINT jobs_dedup_key UNIQUE (kind, dedup_key)
);
CREATE INDEX jobs_due_idx ON jobs (run_at) WHERE status = 'pending';

GRANT SELECT, INSERT, UPDATE ON jobs TO saas_app;
