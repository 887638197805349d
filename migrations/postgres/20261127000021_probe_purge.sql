-- Readiness probes leave nothing behind. Their tenants are synthetic; their audit
-- entries are not written (see tenancy::audit::record), and what they leave in the
-- other tables is removed by this function, which the readiness run calls:
--
-- * a probe tenant made by a synthetic signup and erased since (its erasure job done):
--   every row of it, signup and deletion record included;
-- * the standing probes: their finished transitions (and those transitions' jobs), and
--   their usage counters and alerts of periods that ended a day ago or more.
--
-- It runs with its owner's rights, so the service needs no DELETE on these tables, and
-- it touches synthetic tenants only.
CREATE FUNCTION purge_readiness_probes() RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    erased uuid[];
    probes uuid[];
    finished uuid[];
    purged integer := 0;
    n integer;
BEGIN
    PERFORM set_config('app.system', 'on', true);
    SELECT coalesce(array_agg(t.id), '{}') INTO erased
    FROM tenants t JOIN tenant_deletions d ON d.tenant_id = t.id
    WHERE t.synthetic AND t.state = 'deleted' AND d.completed_at IS NOT NULL;
    SELECT coalesce(array_agg(id), '{}') INTO probes
    FROM tenants WHERE synthetic AND state <> 'deleted';
    -- A finished transition goes once its job has ended too (a plan change's job marks
    -- the transition completed a moment before it is itself marked done).
    SELECT coalesce(array_agg(t.id), '{}') INTO finished
    FROM tenant_transitions t
    WHERE (t.tenant_id = ANY (erased)
           OR (t.tenant_id = ANY (probes) AND t.status IN ('completed', 'failed', 'canceled')))
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'pending'
                      AND j.dedup_key = 'trn_' || replace(t.id::text, '-', ''));
    -- An erased probe whose transitions are not all finished waits for the next purge.
    SELECT coalesce(array_agg(e), '{}') INTO erased FROM unnest(erased) AS e
    WHERE NOT EXISTS (SELECT 1 FROM tenant_transitions t
                      WHERE t.tenant_id = e AND NOT t.id = ANY (finished));

    DELETE FROM jobs WHERE status <> 'pending' AND dedup_key = ANY (
        SELECT 'trn_' || replace(id::text, '-', '') FROM unnest(finished) AS id
        UNION ALL
        SELECT 'sgn_' || replace(id::text, '-', '') FROM unnest(erased) AS id);
    GET DIAGNOSTICS n = ROW_COUNT; purged := purged + n;
    DELETE FROM tenant_transitions WHERE id = ANY (finished);
    GET DIAGNOSTICS n = ROW_COUNT; purged := purged + n;
    DELETE FROM usage_counters WHERE tenant_id = ANY (probes)
        AND period_start < now() - interval '2 days';
    GET DIAGNOSTICS n = ROW_COUNT; purged := purged + n;
    DELETE FROM quota_alerts WHERE tenant_id = ANY (probes)
        AND period_start < now() - interval '2 days';
    GET DIAGNOSTICS n = ROW_COUNT; purged := purged + n;

    IF cardinality(erased) > 0 THEN
        DELETE FROM dashboard_sessions WHERE tenant_id = ANY (erased);
        DELETE FROM payment_leases WHERE tenant_id = ANY (erased);
        DELETE FROM api_keys WHERE tenant_id = ANY (erased);
        DELETE FROM winback_campaigns WHERE tenant_id = ANY (erased);
        DELETE FROM usage_counters WHERE tenant_id = ANY (erased);
        DELETE FROM quota_alerts WHERE tenant_id = ANY (erased);
        DELETE FROM notifications WHERE tenant_id = ANY (erased);
        DELETE FROM tenant_deletions WHERE tenant_id = ANY (erased);
        DELETE FROM signup_steps WHERE signup_id = ANY (erased);
        DELETE FROM signups WHERE id = ANY (erased) AND synthetic;
        DELETE FROM tenants WHERE id = ANY (erased);
        GET DIAGNOSTICS n = ROW_COUNT; purged := purged + n;
    END IF;
    RETURN purged;
END
$$;
REVOKE ALL ON FUNCTION purge_readiness_probes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_readiness_probes() TO saas_app;
