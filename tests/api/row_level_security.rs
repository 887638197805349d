//! Row-level security is the second wall behind the tenant filter in every query: these
//! tests check that it is on everywhere it must be, and that it holds on its own.

use integration_tests::TestApp;
use sqlx::Row;

/// Tables that hold tenant data: those with a `tenant_id` column, and `tenants` itself.
async fn tenant_owned_tables(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
           AND (a.attname IS NOT NULL OR c.relname = 'tenants') \
         ORDER BY 1",
    )
    .fetch_all(&app.owner_pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_tenant_owned_table_has_row_level_security_enabled_and_forced() {
    let app = TestApp::spawn().await;
    let tables = tenant_owned_tables(&app).await;
    for expected in ["tenants", "api_keys", "audit_log"] {
        assert!(
            tables.iter().any(|t| t == expected),
            "{expected} not found in {tables:?}"
        );
    }
    for table in &tables {
        let row = sqlx::query(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, \
                    (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies \
             FROM pg_class c WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace",
        )
        .bind(table)
        .fetch_one(&app.owner_pool)
        .await
        .unwrap();
        assert!(
            row.get::<bool, _>(0),
            "{table}: row-level security not enabled"
        );
        assert!(
            row.get::<bool, _>(1),
            "{table}: row-level security not forced"
        );
        assert!(row.get::<i64, _>(2) > 0, "{table}: no policy");
    }
}

#[tokio::test]
async fn the_service_role_owns_nothing_and_cannot_bypass_row_level_security() {
    let app = TestApp::spawn().await;
    let (role, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(role, "saas_app");
    assert!(!superuser, "the service role is a superuser");
    assert!(!bypass, "the service role can bypass row-level security");

    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = current_user",
    )
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(owned, 0, "the service role owns tables");

    // It cannot switch the wall off either.
    let result = sqlx::query("ALTER TABLE api_keys DISABLE ROW LEVEL SECURITY")
        .execute(app.db.pool())
        .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn a_query_without_a_tenant_filter_still_sees_only_the_current_tenants_rows() {
    let app = TestApp::spawn().await;
    let alice = app.create_tenant("starter").await;
    let bob = app.create_tenant("pro").await;
    // Sentinel rows for Bob that must never show up for Alice.
    let mut tx = app.db.tenant_tx(bob.id).await.unwrap();
    for i in 0..3 {
        tenancy::api_keys::create(&mut tx, bob.id, &format!("bob-sentinel-{i}"))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let mut tx = app.db.tenant_tx(alice.id).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM api_keys")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(names, ["test"]);
    let tenants: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, [alice.id.as_uuid()]);
    // Writing a row for another tenant is refused by the policy's check.
    let result = sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, display_prefix, secret_hash) \
         VALUES (gen_random_uuid(), $1, 'forged', 'sk_x', '\\x00')",
    )
    .bind(bob.id.as_uuid())
    .execute(&mut *tx)
    .await;
    assert!(result.is_err(), "inserted a row for another tenant");
    drop(tx);

    // Nor can an update or delete reach Bob's rows.
    let mut tx = app.db.tenant_tx(alice.id).await.unwrap();
    let touched = sqlx::query("UPDATE api_keys SET name = 'hijacked' WHERE tenant_id = $1")
        .bind(bob.id.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(touched, 0);
    tx.commit().await.unwrap();

    // A connection that names no tenant sees no tenant rows at all.
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(unscoped, 0);

    // Bob's data is intact.
    let mut tx = app.db.tenant_tx(bob.id).await.unwrap();
    let bob_names: Vec<String> = sqlx::query_scalar("SELECT name FROM api_keys ORDER BY name")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        bob_names,
        ["bob-sentinel-0", "bob-sentinel-1", "bob-sentinel-2", "test"]
    );
}

#[tokio::test]
async fn the_audit_log_is_append_only_even_for_the_owner() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    let entry = tenancy::audit::AuditEntry::new(
        Some(tenant.id),
        tenancy::audit::Actor::System("test"),
        "test.entry",
    );
    tenancy::audit::record(&mut tx, &entry).await.unwrap();
    tx.commit().await.unwrap();

    // The service role may not update an entry's content (only seal it) nor delete.
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    assert!(
        sqlx::query("UPDATE audit_log SET reason = 'x'")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);

    // The owner may hold every grant, but the trigger refuses changes all the same.
    for statement in [
        "UPDATE audit_log SET reason = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let mut tx = app.owner_pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.system', 'on', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let result = sqlx::query(statement).execute(&mut *tx).await;
        let error = result.expect_err(statement).to_string();
        assert!(error.contains("append-only"), "{statement}: {error}");
    }
}
