-- Questions other parts of the service ask about a tenant inside their own statements
-- (filters of operator lists, the outbox's claim), published by the tenant store so
-- that they need not read the tenants table themselves: its columns can change behind
-- these. Row-level security applies as to any query of the caller.

-- Whether the tenant is a readiness probe (left out of every operator figure).
CREATE FUNCTION tenant_is_synthetic(tenant uuid) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce((SELECT synthetic FROM tenants WHERE id = tenant), false) $$;

-- Whether `address` is the tenant's email and its owner confirmed it.
CREATE FUNCTION tenant_address_confirmed(tenant uuid, address text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT EXISTS (SELECT 1 FROM tenants
                         WHERE id = tenant AND email_verified_at IS NOT NULL
                           AND lower(email) = lower(address)) $$;
