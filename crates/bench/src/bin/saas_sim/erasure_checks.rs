//! What an erased tenant leaves: its key refused, nothing of its name or address in
//! what operators see, in any Postgres table, or at Stripe, and no usage in ClickHouse.
//! Postgres is read with a read-only scan of every table's rows as text, so that a
//! column nobody thought of is searched too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::api::{Api, As};
use crate::books::{Books, Tally, Tenant};
use crate::stripe_view::StripeSource;

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
    // Erasures run as jobs: read everything again until nothing is left or the deadline.
    let mut left_of: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    loop {
        left_of.clear();
        let customers = stores.stripe.customers().await?;
        for tenant in &erased {
            let mut left = Vec::new();
            gone_from_the_api(api, tenant, &mut left).await;
            gone_from_clickhouse(stores, tenant, &mut left).await?;
            if customers.iter().any(|customer| mentions(customer, tenant)) {
                left.push("a Stripe customer holds its name or address".into());
            }
            if !left.is_empty() {
                left_of.insert(tenant.index, left);
            }
        }
        // Every Postgres table is scanned once for all of them, once the rest is gone.
        if left_of.is_empty() {
            for (index, found) in left_in_postgres(&mut postgres, &tables, &erased).await? {
                left_of.entry(index).or_default().push(found);
            }
        }
        if left_of.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for tenant in erased {
        let left = left_of.get(&tenant.index);
        if !tally.check(left.is_none()) {
            books.violation(format!(
                "{} erased, yet: {}",
                tenant.tenant_id,
                left.map(|l| l.join("; ")).unwrap_or_default()
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
    match api.operator_view(&tenant.tenant_id).await {
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

/// Per tenant (by index), each Postgres table whose rows name it, with how many.
/// One read of each table for all `tenants`, by one pattern that matches any of them.
async fn left_in_postgres(
    postgres: &mut PgConnection,
    tables: &[String],
    tenants: &[&Tenant],
) -> anyhow::Result<Vec<(usize, String)>> {
    let pattern = tenants
        .iter()
        .flat_map(|t| {
            [
                regex_escaped(&t.email()),
                format!("{}([^0-9]|$)", regex_escaped(&Tenant::company_of(t.index))),
            ]
        })
        .collect::<Vec<_>>()
        .join("|");
    let mut found = Vec::new();
    for table in tables {
        let sql = format!("SELECT t::text FROM \"{table}\" t WHERE t::text ~ $1 LIMIT 10000");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&pattern)
            .fetch_all(&mut *postgres)
            .await?;
        for tenant in tenants {
            let count = rows
                .iter()
                .filter(|row| row.contains(&tenant.email()) || names(row, tenant))
                .count();
            if count > 0 {
                found.push((
                    tenant.index,
                    format!("{count} rows of Postgres table {table} hold its name or address"),
                ));
            }
        }
    }
    Ok(found)
}

/// `text` matched literally in a Postgres regular expression.
fn regex_escaped(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::regex_escaped;

    #[test]
    fn an_address_is_matched_literally() {
        assert_eq!(regex_escaped("sim+1@example.com"), r"sim\+1@example\.com");
        assert_eq!(
            regex_escaped("a(b)|[c]{2}^$*?\\"),
            r"a\(b\)\|\[c\]\{2\}\^\$\*\?\\"
        );
        assert_eq!(regex_escaped("Simulated tenant 7"), "Simulated tenant 7");
    }
}
