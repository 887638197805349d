//! Cards that start declining: dunning suspends the tenant, which comes back by itself
//! with a new card.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::json;

use crate::api::{Api, As};
use crate::books::{Books, Tally, Tenant};
use crate::life::note;
use crate::stripe_view::StripeSource;

/// Stripe's test card that attaches and then declines every charge
/// (https://docs.stripe.com/testing#declined-payments).
const DECLINING_CARD: &str = "4000000000000341";

/// The tenant's card starts declining: a card that declines every charge becomes its
/// Stripe customer's default, as the card holder's bank would make it.
pub async fn start_declining(stripe: &StripeSource, tenant: &Tenant) -> anyhow::Result<()> {
    let customer = stripe
        .customer_with_email(&tenant.email())
        .await?
        .context("the tenant's Stripe customer")?;
    let card = stripe
        .post(
            "/v1/payment_methods",
            &[
                ("type", "card"),
                ("card[number]", DECLINING_CARD),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2030"),
                ("card[cvc]", "123"),
            ],
        )
        .await?;
    let card = card["id"].as_str().context("a payment method id")?;
    stripe
        .post(
            &format!("/v1/payment_methods/{card}/attach"),
            &[("customer", customer.as_str())],
        )
        .await?;
    stripe
        .post(
            &format!("/v1/customers/{customer}"),
            &[("invoice_settings[default_payment_method]", card)],
        )
        .await?;
    tenant.live.state().declining = true;
    Ok(())
}

/// Each tenant whose card declines and that dunning suspended comes back with a new
/// card. Until `wait_until`, one not suspended yet is waited for; past it, that is a
/// violation.
pub async fn bring_back(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    tally: &mut Tally,
    wait_until: Option<Instant>,
) {
    for tenant in tenants.iter().filter(|t| t.live.state().declining) {
        let done = loop {
            if let Some(done) = come_back(api, tenant).await {
                break Some(done);
            }
            match wait_until {
                None => break None,
                Some(deadline) if Instant::now() > deadline => {
                    break Some(Err(anyhow::anyhow!("dunning never suspended it")));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        if let Some(done) = done {
            note(books, tenant, "coming back after dunning", done, tally);
        }
    }
}

/// A tenant whose card declines, once dunning suspended it, comes back by itself with a
/// new card: `None` while it is not suspended yet, else whether it is served again.
async fn come_back(api: &Api, tenant: &Tenant) -> Option<anyhow::Result<bool>> {
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let me = api.get("GET /v1/tenant", &key).await.ok()?;
    if me.body["state"] != "suspended" {
        return None;
    }
    // The suspension started a win-back campaign.
    tenant.live.state().campaigns += 1;
    let asked = api
        .call_idempotent(
            "POST /v1/tenant/reactivation",
            Method::POST,
            "/v1/tenant/reactivation",
            As::Key(&key),
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    let asked = match asked {
        Ok(asked) if asked.status == 202 => asked,
        Ok(asked) => {
            return Some(Err(anyhow::anyhow!(
                "reactivation answered {} {}",
                asked.status,
                asked.body
            )));
        }
        Err(error) => return Some(Err(error)),
    };
    drop(asked);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(me) = api.get("GET /v1/tenant", &key).await
            && me.body["state"] == "active"
        {
            tenant.live.state().declining = false;
            return Some(Ok(true));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Ok(false))
}
