//! What an erased tenant leaves: its key refused, nothing of its name or address in
//! what operators see, in any Postgres table, or at Stripe, and no usage in ClickHouse.
//! Postgres is read with a read-only scan of every table's rows as text, so that a
//! column nobody thought of is searched too.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::api::{Api, As};
use crate::books::{Books, Tally, Tenant};
use crate::checks::StripeSource;

/// Where an erased tenant's data could be left.
pub struct Stores<'a> {
    pub clickhouse_url: &'a str,
    pub database: &'a str,
    pub postgres_url: &'a str,
    pub stripe: &'a StripeSource,
}

/// Waits (up to `within`) for each erasure to finish, then checks what it left; one
/// tally entry per erased tenant.
pub async fn check(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    stores: &Stores<'_>,
    within: Duration,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let erased: Vec<&Tenant> = tenants.iter().filter(|t| t.erased()).collect();
    if erased.is_empty() {
        return Ok(tally);
    }
    let deadline = Instant::now() + within;
    let mut postgres = PgConnection::connect(stores.postgres_url).await?;
    sqlx::query("SET app.system = 'on'")
        .execute(&mut postgres)
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
         AND tablename NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(&mut postgres)
    .await?;
    let mut customers = stores.stripe.customers().await?;
    for tenant in erased {
        let mut left = Vec::new();
        loop {
            left.clear();
            gone_from_the_api(api, tenant, &mut left).await;
            gone_from_clickhouse(stores, tenant, &mut left).await?;
            gone_from_postgres(&mut postgres, &tables, tenant, &mut left).await?;
            // The erasure job deletes the customer first but retries it after a Stripe
            // fault: Stripe is read again until the deadline.
            if left.is_empty() {
                customers = stores.stripe.customers().await?;
            }
            if customers.iter().any(|customer| mentions(customer, tenant)) {
                left.push("a Stripe customer holds its name or address".into());
            }
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !tally.check(left.is_empty()) {
            books.violation(format!(
                "{} erased, yet: {}",
                tenant.tenant_id,
                left.join("; ")
            ));
        }
    }
    Ok(tally)
}

async fn gone_from_the_api(api: &Api, tenant: &Tenant, left: &mut Vec<String>) {
    let own = api
        .call(
            "GET /v1/tenant",
            Method::GET,
            "/v1/tenant",
            As::Key(&tenant.key()),
            None,
        )
        .await;
    if !own.is_ok_and(|answer| answer.status == 401) {
        left.push("its key is not refused".into());
    }
    let path = format!("/v1/admin/tenants/{}", tenant.tenant_id);
    match api
        .call(
            "GET /v1/admin/tenants/{id}",
            Method::GET,
            &path,
            As::Operator,
            None,
        )
        .await
    {
        Ok(seen) if seen.body["state"] == "deleted" => {
            if mentions(&seen.body, tenant) {
                left.push("operators still see its name or address".into());
            }
        }
        Ok(seen) => left.push(format!("it is {}", seen.body["state"])),
        Err(_) => left.push("no answer about it".into()),
    }
}

fn mentions(body: &Value, tenant: &Tenant) -> bool {
    let text = body.to_string();
    text.contains(&tenant.email()) || names(&text, tenant)
}

/// Whether `text` holds the tenant's company name (and not merely one that starts the
/// same, as "Simulated tenant 1" does "Simulated tenant 12").
fn names(text: &str, tenant: &Tenant) -> bool {
    let company = Tenant::company_of(tenant.index);
    text.match_indices(&company).any(|(at, _)| {
        !text[at + company.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

async fn gone_from_clickhouse(
    stores: &Stores<'_>,
    tenant: &Tenant,
    left: &mut Vec<String>,
) -> anyhow::Result<()> {
    let uuid = crate::usage_store::tenant_uuid(&tenant.tenant_id);
    let sql = format!(
        "SELECT count() FROM {}.usage_events WHERE tenant_id = toUUID('{uuid}')",
        stores.database
    );
    let rows: u64 = reqwest::Client::new()
        .post(stores.clickhouse_url)
        .body(sql)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?
        .trim()
        .parse()
        .context("a count")?;
    if rows > 0 {
        left.push(format!("{rows} usage rows in ClickHouse"));
    }
    Ok(())
}

async fn gone_from_postgres(
    postgres: &mut PgConnection,
    tables: &[String],
    tenant: &Tenant,
    left: &mut Vec<String>,
) -> anyhow::Result<()> {
    let company = format!("{}([^0-9]|$)", Tenant::company_of(tenant.index));
    for table in tables {
        let sql = format!(
            "SELECT count(*) FROM \"{table}\" t WHERE strpos(t::text, $1) > 0 OR t::text ~ $2"
        );
        let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(tenant.email())
            .bind(&company)
            .fetch_one(&mut *postgres)
            .await?;
        if found > 0 {
            left.push(format!(
                "{found} rows of Postgres table {table} hold its name or address"
            ));
        }
    }
    Ok(())
}
