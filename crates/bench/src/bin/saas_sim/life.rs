//! Tenants' lives alongside their usage: keys rotated and the old one revoked, operator
//! suspensions and reactivations, upgrades taken at once and downgrades at the period's
//! end. Each change holds the tenant's gate, so that no batch of its usage is in flight
//! while the change takes effect, and is written in the tenant's [`Live`] state for the
//! checks.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, As};
use crate::books::{Books, MetricUsage, PlanChange, Tally, Tenant};
use crate::checks::StripeSource;

/// Paid plans in order of price: upgrades move right, downgrades left.
const LADDER: [&str; 3] = ["starter", "pro", "enterprise"];

#[derive(Debug, Default, Clone, Copy)]
pub struct LifeTally {
    /// Per rotation: the new key works and the revoked one is refused at once.
    pub rotations: Tally,
    /// Per suspension: usage refused while suspended, served again once reactivated.
    pub suspensions: Tally,
    /// Per tenant whose card started declining: dunning suspended it, and it came back
    /// by itself with a new card.
    pub dunning: Tally,
    /// Per erasure: the export held the tenant's data, and the erasure was taken.
    pub erasures: Tally,
    pub upgrades: u64,
    pub downgrades: u64,
    /// Changes the service turned down because another transition was running.
    pub busy: u64,
}

/// Changes tenants' lives until `until`, one change at a time, every `every`.
pub async fn run(
    api: &Api,
    books: &Books,
    tenants: &[Tenant],
    stripe: &StripeSource,
    until: Instant,
    every: Duration,
    seed: u64,
) -> LifeTally {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x11fe);
    let mut tally = LifeTally::default();
    let mut suspended: Vec<(Instant, &Tenant)> = Vec::new();
    let mut declined = 0;
    while Instant::now() < until {
        tokio::time::sleep(every).await;
        // Reactivations that are due come first.
        let now = Instant::now();
        for (_, tenant) in suspended.iter().filter(|(due, _)| *due <= now) {
            let done = reactivate(api, tenant).await;
            note(books, tenant, "reactivation", done, &mut tally.suspensions);
        }
        suspended.retain(|(due, _)| *due > now);
        let tenant = &tenants[rng.random_range(0..tenants.len())];
        // A tenant whose card declines is left to dunning and to itself.
        if tenant.live.state().suspended
            || tenant.live.state().declining
            || tenant.erased()
            || suspended.iter().any(|(_, t)| t.index == tenant.index)
        {
            continue;
        }
        // Tenants dunning suspended come back with a new card.
        for tenant in tenants.iter().filter(|t| t.live.state().declining) {
            if let Some(done) = come_back(api, tenant).await {
                note(
                    books,
                    tenant,
                    "coming back after dunning",
                    done,
                    &mut tally.dunning,
                );
            }
        }
        // A few tenants leave, and a few cards start declining: one in twenty at most.
        let few = (tenants.len() as u64 / 20).max(1);
        let may_decline = declined < few && tenant.plan != "free";
        let may_erase = tally.erasures.checked < few;
        let outcome = match rng.random_range(0..6) {
            5 if may_decline => {
                declined += 1;
                start_declining(stripe, tenant)
                    .await
                    .map(|()| Ok(()))
                    .map_err(|_| Busy)
            }
            4 | 5 if !may_erase => continue,
            4 => erase(api, tenant).await.map(|ok| {
                tally.erasures.check(ok);
                ok.then_some(())
                    .ok_or("the export or the erasure did not behave")
            }),
            0 => rotate_key(api, tenant).await.map(|ok| {
                tally.rotations.check(ok);
                ok.then_some(())
                    .ok_or("the revoked key still works or the new one does not")
            }),
            1 => suspend(api, tenant).await.map(|done| {
                if done {
                    suspended.push((Instant::now() + every * 8, tenant));
                }
                Ok(())
            }),
            2 => change_plan(api, books, tenant, true).await.map(|done| {
                tally.upgrades += u64::from(done);
                Ok(())
            }),
            _ => change_plan(api, books, tenant, false).await.map(|done| {
                tally.downgrades += u64::from(done);
                Ok(())
            }),
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(what)) => books.violation(format!("{}: {what}", tenant.tenant_id)),
            Err(Busy) => tally.busy += 1,
        }
    }
    // Nobody stays suspended past the run: their periods are checked like the rest.
    for (_, tenant) in suspended {
        let done = reactivate(api, tenant).await;
        note(books, tenant, "reactivation", done, &mut tally.suspensions);
    }
    // Dunning goes on after the traffic: wait for each suspension, and come back.
    let deadline = Instant::now() + Duration::from_secs(120);
    for tenant in tenants.iter().filter(|t| t.live.state().declining) {
        let done = loop {
            if let Some(done) = come_back(api, tenant).await {
                break done;
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!("dunning never suspended it"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        note(
            books,
            tenant,
            "coming back after dunning",
            done,
            &mut tally.dunning,
        );
    }
    tally
}

fn note(books: &Books, tenant: &Tenant, what: &str, done: anyhow::Result<bool>, tally: &mut Tally) {
    match done {
        Ok(ok) => {
            if !tally.check(ok) {
                books.violation(format!("{}: {what} did not behave", tenant.tenant_id));
            }
        }
        Err(error) => books.violation(format!("{}: {what} failed: {error}", tenant.tenant_id)),
    }
}

/// The service turned a change down (another transition running) or could not be
/// reached (a fault): the change is skipped.
struct Busy;

/// A new key, the old one revoked with it; whether the new key works and the old one is
/// refused at once.
async fn rotate_key(api: &Api, tenant: &Tenant) -> Result<bool, Busy> {
    let _gate = tenant.live.gate.write().await;
    let (old_key, old_id) = (tenant.key(), tenant.key_id());
    let created = call(
        api,
        "POST /v1/api-keys",
        Method::POST,
        "/v1/api-keys",
        As::Key(&old_key),
        Some(&json!({"name": "rotated by saas-sim"})),
    )
    .await?;
    if created.status != 201 {
        return Ok(false);
    }
    let (Some(new_key), Some(new_id)) =
        (created.body["secret"].as_str(), created.body["id"].as_str())
    else {
        return Ok(false);
    };
    let revoked = call(
        api,
        "DELETE /v1/api-keys/{id}",
        Method::DELETE,
        &format!("/v1/api-keys/{old_id}"),
        As::Key(new_key),
        None,
    )
    .await?;
    if !revoked.status.is_success() {
        return Ok(false);
    }
    {
        let mut state = tenant.live.state();
        state.api_key = new_key.to_owned();
        state.key_id = new_id.to_owned();
    }
    let old = call(
        api,
        "GET /v1/tenant",
        Method::GET,
        "/v1/tenant",
        As::Key(&old_key),
        None,
    )
    .await?;
    let new = call(
        api,
        "GET /v1/tenant",
        Method::GET,
        "/v1/tenant",
        As::Key(new_key),
        None,
    )
    .await?;
    Ok(old.status == 401 && new.status == 200 && new.body["id"] == json!(tenant.tenant_id))
}

/// The tenant exports its data, then asks to be erased; whether the export held its
/// data and the erasure was taken. What the erasure leaves is checked at the end.
async fn erase(api: &Api, tenant: &Tenant) -> Result<bool, Busy> {
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let export = call(
        api,
        "GET /v1/tenant/export",
        Method::GET,
        "/v1/tenant/export",
        As::Key(&key),
        None,
    )
    .await?;
    let exported = export.status == 200 && export.body.to_string().contains(&tenant.email());
    let asked = api
        .call_idempotent(
            "POST /v1/tenant/erasure",
            Method::POST,
            "/v1/tenant/erasure",
            As::Key(&key),
            &json!({}),
        )
        .await
        .map_err(|_| Busy)?;
    if asked.status == 409 {
        return Err(Busy);
    }
    let taken = asked.status == 202;
    if taken {
        tenant.live.state().erased = true;
    }
    Ok(exported && taken)
}

/// Stripe's test card that attaches and then declines every charge
/// (https://docs.stripe.com/testing#declined-payments).
const DECLINING_CARD: &str = "4000000000000341";

/// The tenant's card starts declining: a card that declines every charge becomes its
/// Stripe customer's default, as the card holder's bank would make it.
async fn start_declining(stripe: &StripeSource, tenant: &Tenant) -> anyhow::Result<()> {
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

/// A tenant whose card declines, once dunning suspended it, comes back by itself with a
/// new card: `None` while it is not suspended yet, else whether it is served again.
async fn come_back(api: &Api, tenant: &Tenant) -> Option<anyhow::Result<bool>> {
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let me = call(
        api,
        "GET /v1/tenant",
        Method::GET,
        "/v1/tenant",
        As::Key(&key),
        None,
    )
    .await
    .ok()?;
    if me.body["state"] != "suspended" {
        return None;
    }
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
        if let Ok(me) = call(
            api,
            "GET /v1/tenant",
            Method::GET,
            "/v1/tenant",
            As::Key(&key),
            None,
        )
        .await
            && me.body["state"] == "active"
        {
            tenant.live.state().declining = false;
            return Some(Ok(true));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Ok(false))
}

/// An operator suspends the tenant; whether its usage is then refused.
async fn suspend(api: &Api, tenant: &Tenant) -> Result<bool, Busy> {
    let _gate = tenant.live.gate.write().await;
    if !operator_transition(api, tenant, "suspended").await? {
        return Ok(false);
    }
    tenant.live.state().suspended = true;
    Ok(true)
}

/// An operator reactivates the tenant; whether it is served again.
async fn reactivate(api: &Api, tenant: &Tenant) -> anyhow::Result<bool> {
    let _gate = tenant.live.gate.write().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    // A fault may be in force: ask again until the service answers.
    while !operator_transition(api, tenant, "active")
        .await
        .unwrap_or(false)
    {
        anyhow::ensure!(Instant::now() < deadline, "not reactivated in 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tenant.live.state().suspended = false;
    let me = call(
        api,
        "GET /v1/tenant",
        Method::GET,
        "/v1/tenant",
        As::Key(&tenant.key()),
        None,
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer"))?;
    Ok(me.status == 200 && me.body["state"] == "active")
}

/// Asks the operator transition to `to` and waits until the tenant is in it.
async fn operator_transition(api: &Api, tenant: &Tenant, to: &str) -> Result<bool, Busy> {
    let path = format!("/v1/admin/tenants/{}/transitions", tenant.tenant_id);
    let asked = api
        .call_idempotent(
            "POST /v1/admin/tenants/{id}/transitions",
            Method::POST,
            &path,
            As::Operator,
            &json!({"to": to, "reason": "saas-sim"}),
        )
        .await
        .map_err(|_| Busy)?;
    if asked.status == 409 {
        return Err(Busy);
    }
    if asked.status != 202 {
        return Ok(false);
    }
    let path = format!("/v1/admin/tenants/{}", tenant.tenant_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(seen) = call(
            api,
            "GET /v1/admin/tenants/{id}",
            Method::GET,
            &path,
            As::Operator,
            None,
        )
        .await
            && seen.body["state"] == to
        {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// An upgrade taken at once, or a downgrade at the period's end, to the next plan on the
/// ladder; whether it was made. One plan change per tenant in a run.
async fn change_plan(api: &Api, books: &Books, tenant: &Tenant, up: bool) -> Result<bool, Busy> {
    if !tenant.live.state().changes.is_empty() {
        return Ok(false);
    }
    let Some(step) = LADDER.iter().position(|p| *p == tenant.plan) else {
        return Ok(false); // free tenants have no card to pay a paid plan with
    };
    let to = if up {
        LADDER.get(step + 1)
    } else {
        step.checked_sub(1).and_then(|s| LADDER.get(s))
    };
    let Some(to) = to else {
        return Ok(false);
    };
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let summary = call(
        api,
        "GET /v1/usage/summary",
        Method::GET,
        "/v1/usage/summary",
        As::Key(&key),
        None,
    )
    .await?;
    let (Some(start), Some(end)) = (
        time(&summary.body["period_start"]),
        time(&summary.body["period_end"]),
    ) else {
        return Err(Busy);
    };
    // A downgrade asked just before the period ends could fall on either side of it.
    if !up && end - Utc::now() < chrono::TimeDelta::seconds(2) {
        return Ok(false);
    }
    let effective = if up { "now" } else { "period_end" };
    let asked = api
        .call_idempotent(
            "POST /v1/tenant/plan-changes",
            Method::POST,
            "/v1/tenant/plan-changes",
            As::Key(&key),
            &json!({"plan": to, "effective": effective}),
        )
        .await
        .map_err(|_| Busy)?;
    if asked.status == 409 {
        return Err(Busy);
    }
    let Some(id) = asked.body["transition"]["id"]
        .as_str()
        .filter(|_| asked.status == 202)
    else {
        books.violation(format!(
            "{}: a plan change answered {} {}",
            tenant.tenant_id, asked.status, asked.body
        ));
        return Ok(false);
    };
    let path = format!("/v1/tenant/transitions/{id}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let effective_at = loop {
        if Instant::now() > deadline {
            books.violation(format!(
                "{}: plan change {id} never took effect",
                tenant.tenant_id
            ));
            return Ok(false);
        }
        if let Ok(seen) = call(
            api,
            "GET /v1/tenant/transitions/{id}",
            Method::GET,
            &path,
            As::Key(&key),
            None,
        )
        .await
        {
            match (seen.body["state"].as_str(), up) {
                (Some("completed"), true) => break time(&seen.body["completed_at"]),
                (Some("scheduled" | "completed"), false) => break Some(end),
                (Some("failed" | "canceled"), _) => {
                    books.violation(format!(
                        "{}: plan change {id} ended {}",
                        tenant.tenant_id, seen.body
                    ));
                    return Ok(false);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(effective_at) = effective_at else {
        return Ok(false);
    };
    // The usage of the period the change fell in, acknowledged before it: no batch is in
    // flight (the gate is held), so the books hold all of it.
    let cycle = end - start;
    let mut period = start;
    while period + cycle <= effective_at {
        period += cycle;
    }
    let usage_before: MetricUsage = if up {
        books
            .usage_of(&tenant.tenant_id)
            .into_iter()
            .filter(|(s, _)| time(&json!(s)) == Some(period))
            .flat_map(|(_, usage)| usage)
            .collect()
    } else {
        MetricUsage::new()
    };
    tenant.live.state().changes.push(PlanChange {
        to: (*to).to_owned(),
        effective_at,
        at_once: up,
        usage_before,
    });
    Ok(true)
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

async fn call(
    api: &Api,
    endpoint: &'static str,
    method: Method,
    path: &str,
    who: As<'_>,
    body: Option<&Value>,
) -> Result<crate::api::Answer, Busy> {
    api.call(endpoint, method, path, who, body)
        .await
        .ok()
        .filter(|answer| !answer.status.is_server_error())
        .ok_or(Busy)
}
