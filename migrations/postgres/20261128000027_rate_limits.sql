-- Rate limits shared by every replica: one row per bucket (say, signups from one
-- client address) holding its theoretical arrival time (GCRA). A request is admitted
-- while that time, moved on by one request's share of the minute, stays within a
-- minute of now; a row whose time has passed says nothing and may be deleted.
CREATE TABLE rate_limits (
    bucket text PRIMARY KEY,
    tat    timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits TO saas_app;
