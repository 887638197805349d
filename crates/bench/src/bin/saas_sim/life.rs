//! Tenants' lives alongside their usage: keys rotated and the old one revoked, operator
//! suspensions and reactivations, upgrades taken at once and downgrades at the period's
//! end. Each change holds the tenant's gate, so that no batch of its usage is in flight
//! while the change takes effect, and is written in the tenant's [`Live`] state for the
//! checks.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, As};
use crate::books::{Books, Tally, Tenant};
use crate::checks::StripeSource;
use crate::{dunning, plan_changes};

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
            if let Some(done) = dunning::come_back(api, tenant).await {
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
                dunning::start_declining(stripe, tenant)
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
            2 => plan_changes::change(api, books, tenant, true)
                .await
                .map(|done| {
                    tally.upgrades += u64::from(done);
                    Ok(())
                }),
            _ => plan_changes::change(api, books, tenant, false)
                .await
                .map(|done| {
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
            if let Some(done) = dunning::come_back(api, tenant).await {
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
pub struct Busy;

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
    // From here on the tenant uses the new key, whatever becomes of the old one.
    {
        let mut state = tenant.live.state();
        state.api_key = new_key.to_owned();
        state.key_id = new_id.to_owned();
    }
    // Revoking is sent until answered; a retry after a lost answer finds it revoked.
    let path = format!("/v1/api-keys/{old_id}");
    let revoked = until_answered(|| {
        call(
            api,
            "DELETE /v1/api-keys/{id}",
            Method::DELETE,
            &path,
            As::Key(new_key),
            None,
        )
    })
    .await?;
    if !(revoked.status.is_success() || revoked.status == 404) {
        return Ok(false);
    }
    let old = until_answered(|| get(api, "GET /v1/tenant", &old_key)).await?;
    let new = until_answered(|| get(api, "GET /v1/tenant", new_key)).await?;
    Ok(old.status == 401 && new.status == 200 && new.body["id"] == json!(tenant.tenant_id))
}

/// Sends a request until the service answers it (a fault may be in force), for up to a
/// minute.
async fn until_answered<F, Fut>(send: F) -> Result<crate::api::Answer, Busy>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<crate::api::Answer, Busy>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send().await {
            Ok(answer) => return Ok(answer),
            Err(Busy) if Instant::now() > deadline => return Err(Busy),
            Err(Busy) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The tenant exports its data, then asks to be erased; whether the export held its
/// data and the erasure was taken. What the erasure leaves is checked at the end.
async fn erase(api: &Api, tenant: &Tenant) -> Result<bool, Busy> {
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let export = get(api, "GET /v1/tenant/export", &key).await?;
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
    // A fault may be in force: ask again until the service answers, and stop asking
    // once an earlier request, whose answer was lost, has done it.
    while !operator_transition(api, tenant, "active")
        .await
        .unwrap_or(false)
    {
        if operator_sees(api, tenant).await.as_deref() == Some("active") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not reactivated in 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tenant.live.state().suspended = false;
    let key = tenant.key();
    let me = until_answered(|| get(api, "GET /v1/tenant", &key))
        .await
        .map_err(|Busy| anyhow::anyhow!("no answer in a minute"))?;
    Ok(me.status == 200 && me.body["state"] == "active")
}

/// The tenant's state as the operator's view shows it, when the service answers.
async fn operator_sees(api: &Api, tenant: &Tenant) -> Option<String> {
    let path = format!("/v1/admin/tenants/{}", tenant.tenant_id);
    let seen = call(
        api,
        "GET /v1/admin/tenants/{id}",
        Method::GET,
        &path,
        As::Operator,
        None,
    )
    .await
    .ok()?;
    seen.body["state"].as_str().map(str::to_owned)
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if operator_sees(api, tenant).await.as_deref() == Some(to) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// A GET of a fixed route with the tenant's key; `endpoint` is "GET <path>".
pub async fn get(api: &Api, endpoint: &'static str, key: &str) -> Result<crate::api::Answer, Busy> {
    let path = endpoint.trim_start_matches("GET ");
    call(api, endpoint, Method::GET, path, As::Key(key), None).await
}

pub async fn call(
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
