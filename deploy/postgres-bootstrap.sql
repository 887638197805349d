-- Creates the two roles and the database, once per Postgres cluster, as a superuser.
-- Run by scripts/stack.sh natively and by the postgres container on first start.
--
--   saas_owner  owns the schema and runs migrations (and, in tests, creates databases).
--   saas_app    is what the service connects as: it owns nothing, is no superuser and
--               cannot bypass row-level security, so the policies always apply to it.
--
-- The passwords are development defaults; production sets its own and passes them in
-- SAAS_DATABASE__URL and SAAS_DATABASE__MIGRATION_URL.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'saas_owner') THEN
        CREATE ROLE saas_owner LOGIN PASSWORD 'saas_owner' NOSUPERUSER NOBYPASSRLS CREATEDB;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'saas_app') THEN
        CREATE ROLE saas_app LOGIN PASSWORD 'saas_app'
            NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

SELECT 'CREATE DATABASE saas OWNER saas_owner'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'saas')
\gexec
