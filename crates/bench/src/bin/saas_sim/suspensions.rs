//! Operator suspensions in a tenant's life: its usage is refused meanwhile, a win-back
//! campaign writes to it (when it confirmed its address), and the operator reactivates
//! it once the campaign's messages arrived.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::api::{Api, As, Busy, until_answered};
use crate::books::{Books, Tenant};
use crate::life::{LifeTally, note};
use crate::mail::{MAIL_WAIT, Mailbox};

/// The tenants an operator suspended, until their reactivation.
#[derive(Default)]
pub struct Suspensions<'t> {
    open: Vec<Suspension<'t>>,
}

struct Suspension<'t> {
    tenant: &'t Tenant,
    /// When the operator means to reactivate it.
    due: Instant,
    /// Win-back messages the tenant had had, per step, when it was suspended.
    winbacks_before: Vec<usize>,
}

impl<'t> Suspensions<'t> {
    pub fn holds(&self, tenant: &Tenant) -> bool {
        self.open.iter().any(|s| s.tenant.index == tenant.index)
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// An operator suspends `tenant` until `due` at the earliest; whether it was.
    pub async fn suspend(
        &mut self,
        api: &Api,
        mailbox: &Mailbox,
        tenant: &'t Tenant,
        due: Instant,
    ) -> Result<bool, Busy> {
        let _gate = tenant.live.gate.write().await;
        let winbacks_before = mailbox.winbacks_to(tenant);
        if !operator_transition(api, tenant, "suspended").await? {
            return Ok(false);
        }
        {
            let mut state = tenant.live.state();
            state.suspended = true;
            state.campaigns += 1;
        }
        self.open.push(Suspension {
            tenant,
            due,
            winbacks_before,
        });
        Ok(true)
    }

    /// Reactivates the tenants whose suspension may end.
    pub async fn end_due(
        &mut self,
        api: &Api,
        books: &Books,
        mailbox: &Mailbox,
        tally: &mut LifeTally,
    ) {
        let mut waiting = Vec::new();
        for suspension in self.open.drain(..) {
            if suspension.may_end(mailbox, books, tally) {
                let done = reactivate(api, suspension.tenant).await;
                note(
                    books,
                    suspension.tenant,
                    "reactivation",
                    done,
                    &mut tally.suspensions,
                );
            } else {
                waiting.push(suspension);
            }
        }
        self.open = waiting;
    }
}

impl Suspension<'_> {
    /// Whether it may end now: it is due, and a tenant that can be mailed has had this
    /// campaign's every message (or waited for them too long, a violation).
    fn may_end(&self, mailbox: &Mailbox, books: &Books, tally: &mut LifeTally) -> bool {
        let now = Instant::now();
        if self.due > now {
            return false;
        }
        if !self.tenant.live.state().confirmed {
            return true;
        }
        let arrived = mailbox
            .winbacks_to(self.tenant)
            .iter()
            .zip(&self.winbacks_before)
            .all(|(now, before)| now > before);
        let given_up = now > self.due + MAIL_WAIT;
        if arrived || given_up {
            tally.winbacks.check(arrived);
        }
        if given_up && !arrived {
            books.violation(format!(
                "{}: suspended, and no win-back in {} s",
                self.tenant.tenant_id,
                MAIL_WAIT.as_secs()
            ));
        }
        arrived || given_up
    }
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
        if api.operator_sees(&tenant.tenant_id).await.as_deref() == Some("active") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not reactivated in 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tenant.live.state().suspended = false;
    let key = tenant.key();
    let me = until_answered(|| api.get("GET /v1/tenant", &key))
        .await
        .map_err(|Busy| anyhow::anyhow!("no answer in a minute"))?;
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if api.operator_sees(&tenant.tenant_id).await.as_deref() == Some(to) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}
