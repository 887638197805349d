//! Signing the population up through `POST /v1/signups`, as customers would.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;

use crate::api::{Api, As};
use crate::books::{Books, Live, Tally, Tenant};

/// Plans, and the share of signups that pick each: most small, a few large.
const PLAN_MIX: [(&str, f64); 4] = [
    ("free", 0.4),
    ("starter", 0.3),
    ("pro", 0.2),
    ("enterprise", 0.1),
];

pub struct Population {
    pub tenants: Vec<Tenant>,
    /// Signups that ended as they should: completed with a good card, failed with a
    /// declining one.
    pub outcomes: Tally,
}

struct Planned {
    index: usize,
    plan: &'static str,
    card: Option<String>,
    declines: bool,
}

pub async fn sign_up(
    api: &Api,
    books: &Books,
    count: usize,
    declining_card: &str,
    decline_share: f64,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<Population> {
    let mut rng = StdRng::seed_from_u64(seed);
    let planned: Vec<Planned> = (0..count)
        .map(|index| {
            let mut pick = rng.random::<f64>();
            let plan = PLAN_MIX
                .iter()
                .find(|(_, share)| {
                    pick -= share;
                    pick < 0.0
                })
                .map_or("free", |(plan, _)| plan);
            let paid = plan != "free";
            let declines = paid && rng.random::<f64>() < decline_share;
            let card = paid.then(|| {
                if declines {
                    declining_card.to_owned()
                } else {
                    "pm_card_visa".to_owned()
                }
            });
            Planned {
                index,
                plan,
                card,
                declines,
            }
        })
        .collect();
    let results: Vec<anyhow::Result<(bool, Option<Tenant>)>> =
        futures_util::stream::iter(planned.into_iter().map(|p| one(api, p)))
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let mut outcomes = Tally::default();
    let mut tenants = Vec::new();
    for result in results {
        let (as_expected, tenant) = result?;
        if !outcomes.check(as_expected) {
            books.violation(format!(
                "a signup ended otherwise than its card says: {tenant:?}"
            ));
        }
        tenants.extend(tenant);
    }
    tenants.sort_by_key(|t| t.index);
    // Skewed load: the tenant at rank r gets weight 1 / (r + 1).
    for (rank, tenant) in tenants.iter_mut().enumerate() {
        tenant.weight = 1.0 / (rank as f64 + 1.0);
    }
    Ok(Population { tenants, outcomes })
}

/// One signup through to its end: whether it ended as its card says, and the tenant.
async fn one(api: &Api, planned: Planned) -> anyhow::Result<(bool, Option<Tenant>)> {
    let body = json!({
        "email": Tenant::email_of(planned.index),
        "company": Tenant::company_of(planned.index),
        "plan": planned.plan,
        "payment_method": planned.card,
    });
    let created = api
        .call(
            "POST /v1/signups",
            Method::POST,
            "/v1/signups",
            As::Anyone,
            Some(&body),
        )
        .await?;
    if created.status != 202 {
        bail!("signup refused: {} {}", created.status, created.body);
    }
    let id = created.body["id"].as_str().context("signup id")?.to_owned();
    let token = created.body["signup_token"]
        .as_str()
        .context("signup token")?
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let view = loop {
        let view = api
            .call(
                "GET /v1/signups/{id}",
                Method::GET,
                &format!("/v1/signups/{id}"),
                As::Key(&token),
                None,
            )
            .await?;
        match view.body["status"].as_str() {
            Some("completed" | "failed") => break view.body,
            _ if Instant::now() > deadline => bail!("signup {id} stuck: {}", view.body),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if view["status"] == "failed" {
        return Ok((planned.declines, None));
    }
    let api_key = view["api_key"]
        .as_str()
        .context("the first completed read carries the key")?
        .to_owned();
    let keys = api
        .call(
            "GET /v1/api-keys",
            Method::GET,
            "/v1/api-keys",
            As::Key(&api_key),
            None,
        )
        .await?;
    let key_id = keys.body["api_keys"][0]["id"]
        .as_str()
        .context("key id")?
        .to_owned();
    let summary = api
        .call(
            "GET /v1/usage/summary",
            Method::GET,
            "/v1/usage/summary",
            As::Key(&api_key),
            None,
        )
        .await?;
    let first_period = summary.body["period_start"]
        .as_str()
        .context("the first period")?
        .to_owned();
    let tenant = Tenant {
        index: planned.index,
        tenant_id: view["tenant_id"].as_str().context("tenant id")?.to_owned(),
        signup_id: id,
        plan: planned.plan.to_owned(),
        first_period,
        weight: 0.0,
        live: Live::new(api_key, key_id),
    };
    Ok((!planned.declines, Some(tenant)))
}
