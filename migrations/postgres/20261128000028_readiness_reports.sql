-- The results of deep readiness runs, so that every replica answers /readiness from the
-- latest one, whichever replica ran it. Runs are serialised across replicas by an
-- advisory lock, so their probes never collide. The newest few are kept.
CREATE TABLE readiness_reports (
    id          bigserial PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT now(),
    report      jsonb NOT NULL
);
GRANT SELECT, INSERT, DELETE ON readiness_reports TO saas_app;
GRANT USAGE ON SEQUENCE readiness_reports_id_seq TO saas_app;
