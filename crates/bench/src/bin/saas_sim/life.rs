//! Tenants' lives alongside their usage: keys rotated and the old one revoked, operator
//! suspensions and reactivations, upgrades taken at once and downgrades at the period's
//! end, cards that start declining, erasures. Each change holds the tenant's gate, so
//! that no batch of its usage is in flight while the change takes effect, and is written
//! in the tenant's [`Live`](crate::books::Live) state for the checks.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::api::{Api, Busy};
use crate::books::{Books, Tally, Tenant};
use crate::mail::Mailbox;
use crate::stripe_view::StripeSource;
use crate::suspensions::Suspensions;
use crate::{dunning, erasure, plan_changes, rotation};

#[derive(Debug, Default, Clone, Copy)]
pub struct LifeTally {
    /// Per rotation: the new key works and the revoked one is refused at once.
    pub rotations: Tally,
    /// Per suspension: usage refused while suspended, served again once reactivated.
    pub suspensions: Tally,
    /// Per suspension of a tenant with a confirmed address: every win-back message
    /// arrived before it was reactivated.
    pub winbacks: Tally,
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

/// Where a life change happens: the deployment's API, Stripe, the tenants' inboxes.
pub struct World<'a> {
    pub api: &'a Api,
    pub books: &'a Books,
    pub stripe: &'a StripeSource,
    pub mailbox: &'a Mailbox,
}

/// Changes tenants' lives until `until`, one change at a time, every `every`.
pub async fn run(
    world: &World<'_>,
    tenants: &[Tenant],
    until: Instant,
    every: Duration,
    seed: u64,
) -> LifeTally {
    let World {
        api,
        books,
        stripe,
        mailbox,
    } = *world;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x11fe);
    let mut tally = LifeTally::default();
    let mut suspended = Suspensions::default();
    let mut declined = 0;
    while Instant::now() < until {
        tokio::time::sleep(every).await;
        // Reactivations that are due come first.
        suspended.end_due(api, books, mailbox, &mut tally).await;
        let tenant = &tenants[rng.random_range(0..tenants.len())];
        // A tenant whose card declines is left to dunning and to itself.
        if tenant.live.state().suspended
            || tenant.live.state().declining
            || tenant.erased()
            || suspended.holds(tenant)
        {
            continue;
        }
        dunning::bring_back(api, books, tenants, &mut tally.dunning, None).await;
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
            4 => erasure::erase(api, tenant).await.map(|ok| {
                tally.erasures.check(ok);
                ok.then_some(())
                    .ok_or("the export or the erasure did not behave")
            }),
            0 => rotation::rotate_key(api, tenant).await.map(|ok| {
                tally.rotations.check(ok);
                ok.then_some(())
                    .ok_or("the revoked key still works or the new one does not")
            }),
            1 => {
                let due = Instant::now() + every * 8;
                suspended
                    .suspend(api, mailbox, tenant, due)
                    .await
                    .map(|_| Ok(()))
            }
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
    while !suspended.is_empty() {
        suspended.end_due(api, books, mailbox, &mut tally).await;
        tokio::time::sleep(every).await;
    }
    // Dunning goes on after the traffic: wait for each suspension, and come back.
    let deadline = Instant::now() + Duration::from_secs(120);
    dunning::bring_back(api, books, tenants, &mut tally.dunning, Some(deadline)).await;
    tally
}

/// Books the outcome of a change that must happen: a violation unless it behaved.
pub fn note(
    books: &Books,
    tenant: &Tenant,
    what: &str,
    done: anyhow::Result<bool>,
    tally: &mut Tally,
) {
    match done {
        Ok(ok) => {
            if !tally.check(ok) {
                books.violation(format!("{}: {what} did not behave", tenant.tenant_id));
            }
        }
        Err(error) => books.violation(format!("{}: {what} failed: {error}", tenant.tenant_id)),
    }
}
