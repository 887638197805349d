//! One fresh Postgres database per test, cloned from a template that is migrated once.
//!
//! The template's name carries a digest of the migrations, so changing a migration makes
//! a new template instead of reusing a stale one. Test processes run in parallel, so the
//! template is built under an advisory lock and renamed into place only when complete.

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tenancy::MIGRATOR;
use tokio::sync::OnceCell;

use crate::stack::Stack;

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
/// Arbitrary, fixed: the key of the advisory lock that serialises template builds.
const TEMPLATE_LOCK: i64 = 0x5AA5_7E57;

fn template_name() -> String {
    let mut digest = Sha256::new();
    for migration in MIGRATOR.iter() {
        digest.update(migration.version.to_be_bytes());
        digest.update(&migration.checksum);
    }
    format!("saas_tmpl_{}", &hex::encode(digest.finalize())[..16])
}

async fn ensure_template(stack: &Stack) -> String {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut admin = PgConnection::connect(&stack.owner_url("postgres"))
                .await
                .expect("connect to Postgres as saas_owner (is the stack up? scripts/stack.sh up)");
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(TEMPLATE_LOCK)
                .execute(&mut admin)
                .await
                .unwrap();
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if !exists {
                let building = format!("{name}_building");
                execute(
                    &mut admin,
                    &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
                )
                .await;
                execute(&mut admin, &format!("CREATE DATABASE {building}")).await;
                let mut conn = PgConnection::connect(&stack.owner_url(&building))
                    .await
                    .unwrap();
                MIGRATOR.run(&mut conn).await.expect("migrations apply");
                conn.close().await.unwrap();
                execute(
                    &mut admin,
                    &format!("ALTER DATABASE {building} RENAME TO {name}"),
                )
                .await;
            }
            metering::ClickHouseSink::migrate(&stack.clickhouse_settings())
                .await
                .expect("ClickHouse migrations apply (is the stack up? scripts/stack.sh up)");
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(TEMPLATE_LOCK)
                .execute(&mut admin)
                .await
                .unwrap();
            name
        })
        .await
        .clone()
}

/// Creates a database for one test and returns its name.
pub async fn fresh_database(stack: &Stack) -> String {
    let template = ensure_template(stack).await;
    let name = format!("saas_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&stack.owner_url("postgres"))
        .await
        .unwrap();
    execute(
        &mut admin,
        &format!("CREATE DATABASE {name} TEMPLATE {template}"),
    )
    .await;
    name
}

async fn execute(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}
