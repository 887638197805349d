//! Collection through Stripe (localstripe, made to follow Stripe's API reference): every
//! invoice is composed at Stripe once with the same lines and total, finalized and
//! charged, and Stripe never advances one on its own; a declining card goes through
//! dunning to suspension and comes back by paying; a collection killed after any Stripe
//! call and run again, or run twice at once, makes one Stripe invoice and one charge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use billing::collection::{Collector, DunningSchedule};
use integration_tests::{
    DyingCaller, TestApp, declining_card, error_code, stripe_get, stripe_post,
};
use payments::{
    Attempt, ChargeOutcome, CustomerDetails, InvoiceDraft, PaymentError, PaymentProvider,
    ProviderInvoice, StripeProvider,
};
use saas_core::TenantId;
use serde_json::{Value, json};
use uuid::Uuid;

/// Our invoice as stored, with what collection recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredInvoice {
    pub id: Uuid,
    pub status: String,
    pub total: i64,
    pub stripe_invoice_id: Option<String>,
    pub payment_attempts: i32,
    pub dunning: String,
}

pub async fn stored_invoices(app: &TestApp, tenant: TenantId) -> Vec<StoredInvoice> {
    let mut tx = app.db.tenant_tx(tenant).await.unwrap();
    sqlx::query_as(
        "SELECT id, status, total, stripe_invoice_id, payment_attempts, dunning FROM invoices \
         WHERE tenant_id = $1 AND kind = 'period' ORDER BY period_start",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .unwrap()
}

pub async fn stripe_customer(app: &TestApp, tenant: TenantId) -> String {
    tenant_record(app, tenant).await.stripe_customer_id.unwrap()
}

pub async fn tenant_record(app: &TestApp, tenant: TenantId) -> tenancy::tenants::Tenant {
    let mut tx = app.db.tenant_tx(tenant).await.unwrap();
    tenancy::tenants::get(&mut tx, tenant).await.unwrap()
}

/// Makes `payment_method` the customer's default, behind the service's back (as a card
/// change in Stripe's dashboard would).
pub async fn set_default_card(customer: &str, payment_method: &str) {
    let attached = stripe_post(
        &format!("/v1/payment_methods/{payment_method}/attach"),
        &[("customer", customer)],
    )
    .await;
    assert_eq!(attached["customer"], customer, "{attached}");
    stripe_post(
        &format!("/v1/customers/{customer}"),
        &[("invoice_settings[default_payment_method]", payment_method)],
    )
    .await;
}

/// The customer's Stripe invoices that were made for one of ours, by our invoice id.
/// Each is checked to be one Stripe never advances on its own.
async fn stripe_invoices_by_reference(customer: &str) -> BTreeMap<String, Vec<Value>> {
    let list = stripe_get(&format!("/v1/invoices?customer={customer}&limit=100")).await;
    let mut by_reference: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for invoice in list["data"].as_array().unwrap() {
        if let Some(reference) = invoice["metadata"]["saas_invoice"].as_str() {
            assert_eq!(invoice["auto_advance"], false, "{invoice}");
            assert_eq!(invoice["collection_method"], "charge_automatically");
            by_reference
                .entry(reference.to_owned())
                .or_default()
                .push(invoice.clone());
        }
    }
    by_reference
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn billing_run(app: &TestApp) -> Value {
    let response = app
        .operator_post("/v1/admin/billing/runs", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

pub fn short_cycles(
    cycle: &'static str,
    dunning: &'static str,
) -> impl FnOnce(&mut gateway::Config) {
    move |config| {
        config.billing.cycle = cycle.parse().unwrap();
        config.billing.close_grace_ms = 300;
        config.billing.dunning_retries = dunning.parse().unwrap();
        // The tests start the invoice runs themselves.
        config.billing.run_interval_ms = 3_600_000;
        config.workers.relay_idle_ms = 20;
    }
}

#[tokio::test]
async fn every_invoice_of_110_tenants_reaches_stripe_once_with_the_same_total_and_is_paid() {
    // Hour-long periods, closed by running the invoice run as of an hour from now: the
    // set-up may take as long as the machine needs.
    let app = TestApp::spawn_with(short_cycles("3600s", "1h")).await;
    let plans = ["starter", "pro", "enterprise"];
    let mut tenants = Vec::new();
    for chunk in (0..110).collect::<Vec<_>>().chunks(10) {
        let signed = futures_util::future::join_all(
            chunk
                .iter()
                .map(|i| app.sign_up_tenant(plans[i % 3], Some("pm_card_visa"))),
        )
        .await;
        tenants.extend(signed);
    }
    // Random usage in every tenant's first period.
    let mut seed = 7_u64;
    let mut next = |below: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % below
    };
    for tenant in &tenants {
        let events: Vec<Value> = (0..1 + next(12))
            .map(|i| {
                let metric = ["queries", "tokens", "bytes"][next(3) as usize];
                let value = match metric {
                    "queries" => next(300_000),
                    "tokens" => next(8_000_000),
                    _ => next(1 << 26),
                };
                json!({"id": format!("e{i}"), "metric": metric, "value": value})
            })
            .collect();
        assert_eq!(
            app.ingest(&tenant.api_key, Value::Array(events))
                .await
                .status(),
            202
        );
    }
    app.drain_relay().await;
    let an_hour_on = chrono::Utc::now() + chrono::TimeDelta::seconds(3_601);
    let run = || {
        billing::invoices::run(
            &app.db,
            &app.clickhouse,
            an_hour_on,
            Duration::from_millis(300),
            billing::invoices::Collection::Stripe,
        )
    };
    let report = run().await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.invoices_created, 110, "{report:?}");

    // A second run finds no tenant due any more; then everything is paid.
    let again = run().await.unwrap();
    assert_eq!(again.tenants_checked, 0, "{again:?}");
    assert_eq!(again.invoices_created, 0, "{again:?}");
    for tenant in &tenants {
        let (app, id) = (&app, tenant.id);
        wait_for(
            "every invoice paid",
            Duration::from_secs(60),
            || async move {
                let invoices = stored_invoices(app, id).await;
                !invoices.is_empty() && invoices.iter().all(|i| i.status == "paid")
            },
        )
        .await;
    }

    for tenant in &tenants {
        let customer = stripe_customer(&app, tenant.id).await;
        let at_stripe = stripe_invoices_by_reference(&customer).await;
        let ours = app.get_json(&tenant.api_key, "/v1/invoices").await;
        for invoice in ours["invoices"].as_array().unwrap() {
            let reference = invoice["id"].as_str().unwrap();
            let twins = at_stripe.get(reference).map(Vec::len).unwrap_or(0);
            assert_eq!(twins, 1, "one Stripe invoice for {reference}");
            let stripe = &at_stripe[reference][0];
            assert_eq!(stripe["total"], invoice["total"], "{stripe} vs {invoice}");
            assert_eq!(stripe["status"], "paid");
            assert_eq!(invoice["status"], "paid");
            assert!(
                stripe["status_transitions"]["finalized_at"].is_i64(),
                "finalized: {stripe}"
            );
            assert_eq!(stripe["currency"], invoice["currency"]);
            // Line for line: each of ours with an amount, by its id, and nothing else.
            let mut ours: Vec<(String, i64)> = invoice["lines"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(_, l)| l["amount"].as_i64() != Some(0))
                .map(|(i, l)| (format!("{reference}:{i}"), l["amount"].as_i64().unwrap()))
                .collect();
            let mut theirs: Vec<(String, i64)> = stripe["lines"]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    let id = l["metadata"]["saas_line"].as_str().unwrap_or("not ours");
                    (id.to_owned(), l["amount"].as_i64().unwrap())
                })
                .collect();
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs, "lines of {reference}");
            let sum: i64 = invoice["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["amount"].as_i64().unwrap())
                .sum();
            assert_eq!(sum, invoice["total"].as_i64().unwrap());
            // Charged once, by us.
            assert_eq!(stripe["attempt_count"], 1, "{stripe}");
        }
        // The signup invoice and the first period's: nothing else at Stripe.
        assert_eq!(at_stripe.len(), ours["invoices"].as_array().unwrap().len());
        let pending = stripe_get(&format!("/v1/invoiceitems?customer={customer}")).await;
        let left: Vec<&Value> = pending["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["invoice"].is_null())
            .collect();
        assert!(left.is_empty(), "nothing left pending: {left:?}");
    }
    // And the quantities are the period's usage.
    let reconciliation = app.operator_get("/v1/admin/billing/reconciliation").await;
    assert!(reconciliation["invoices_checked"].as_u64().unwrap() >= 110);
    assert_eq!(reconciliation["mismatches"], json!([]), "{reconciliation}");
}

/// A tenant signed up with a good card that is then swapped (in Stripe) for one whose
/// charges are declined, with usage in its first period of `cycle`, and that period
/// invoiced: the first charge fails as soon as collection runs.
pub async fn invoiced_with_a_declining_card(
    app: &TestApp,
    plan: &str,
    cycle: Duration,
) -> integration_tests::SignedUpTenant {
    let tenant = app.sign_up_tenant(plan, Some("pm_card_visa")).await;
    let customer = stripe_customer(app, tenant.id).await;
    set_default_card(&customer, &declining_card().await).await;
    let usage = json!([{"id": "u1", "metric": "tokens", "value": 3_000_000}]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    tokio::time::sleep(cycle + Duration::from_millis(500)).await;
    app.drain_relay().await;
    billing_run(app).await;
    tenant
}

pub async fn wait_until_suspended(app: &TestApp, tenant: TenantId) {
    wait_for("dunning to suspend the tenant", Duration::from_secs(30), || async move {
        tenant_record(app, tenant).await.state == saas_core::TenantState::Suspended
    })
    .await;
}

#[tokio::test]
async fn a_declining_card_goes_through_every_retry_then_a_new_card_pays_and_reactivates() {
    let app = TestApp::spawn_with(short_cycles("3s", "1s,2s,3s")).await;
    let tenant = invoiced_with_a_declining_card(&app, "starter", Duration::from_secs(3)).await;
    wait_until_suspended(&app, tenant.id).await;
    let invoice = stored_invoices(&app, tenant.id).await.remove(0);
    assert_eq!(invoice.status, "open");
    assert_eq!(
        invoice.payment_attempts, 4,
        "the first charge and three retries"
    );
    assert_eq!(invoice.dunning, "exhausted");
    let stripe_id = invoice.stripe_invoice_id.clone().unwrap();
    let at_stripe = stripe_get(&format!("/v1/invoices/{stripe_id}")).await;
    assert_eq!(at_stripe["status"], "open");
    assert_eq!(at_stripe["total"].as_i64(), Some(invoice.total));
    // Dunning is ours alone: Stripe has no retry of its own scheduled.
    assert_eq!(at_stripe["auto_advance"], false, "{at_stripe}");
    assert!(at_stripe["next_payment_attempt"].is_null(), "{at_stripe}");
    // The tenant sees where payment stands; the operator sees the invoice in dunning.
    let listed = app.get_json(&tenant.api_key, "/v1/invoices").await;
    let payment = &listed["invoices"][0]["payment"];
    assert_eq!(payment["attempts"], 4, "{listed}");
    assert_eq!(payment["dunning"], "exhausted");
    assert!(
        payment["last_error"].as_str().unwrap().contains("declined"),
        "{payment}"
    );
    let overview = app.operator_get("/v1/admin/overview").await;
    assert!(
        overview["unpaid_invoices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == json!(invoice.id.to_string()) && i["dunning"] == "exhausted"),
        "{overview}"
    );
    // One job per retry, each run once.
    let retries: Vec<(String, i32)> = sqlx::query_as(
        "SELECT status, attempts FROM jobs WHERE kind = 'billing.retry_payment' ORDER BY created_at",
    )
    .fetch_all(&app.owner_pool)
    .await
    .unwrap();
    assert_eq!(retries.len(), 3, "{retries:?}");
    // Suspended by dunning, audited, free to come back by paying; metered calls refused.
    let transitions = app
        .get_json(&tenant.api_key, "/v1/tenant/transitions")
        .await;
    assert!(
        transitions["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["to"] == "suspended"),
        "{transitions}"
    );
    let (actor, may_reactivate): (String, bool) = {
        let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
        sqlx::query_as(
            "SELECT actor, tenant_may_reactivate FROM tenant_transitions \
             WHERE tenant_id = $1 AND kind = 'suspension' ORDER BY created_at DESC LIMIT 1",
        )
        .bind(tenant.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap()
    };
    assert!(
        may_reactivate,
        "a suspension for an unpaid bill can be lifted by paying"
    );
    assert_eq!(actor, "system:dunning");
    tokio::time::sleep(Duration::from_millis(2_100)).await; // key cache
    let refused = app
        .ingest(
            &tenant.api_key,
            json!([{"id": "u2", "metric": "tokens", "value": 1}]),
        )
        .await;
    assert_eq!(refused.status(), 403);
    assert_eq!(error_code(refused).await, "tenant_suspended");
    let campaigns = app
        .operator_get("/v1/admin/winback/campaigns?status=running")
        .await;
    assert!(
        campaigns["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["tenant_id"] == json!(tenant.id.as_uuid().to_string())),
        "{campaigns}"
    );

    // Another declining card: the unpaid invoice is charged first, and refused.
    let still_declining = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/reactivation",
            &json!({"payment_method": declining_card().await}),
        )
        .await;
    assert_eq!(still_declining.status(), 402);
    assert_eq!(error_code(still_declining).await, "payment_failed");

    // A good card pays the invoice and brings the tenant back.
    let back = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/reactivation",
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(back.status(), 202, "{}", back.text().await.unwrap());
    let paid = stored_invoices(&app, tenant.id).await.remove(0);
    assert_eq!(paid.status, "paid");
    let at_stripe = stripe_get(&format!("/v1/invoices/{stripe_id}")).await;
    assert_eq!(at_stripe["status"], "paid");
    let me = app.get_json(&tenant.api_key, "/v1/tenant").await;
    assert_eq!(me["state"], "active");
    let won = app
        .operator_get("/v1/admin/winback/campaigns?status=won")
        .await;
    assert!(
        won["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["tenant_id"] == json!(tenant.id.as_uuid().to_string())),
        "{won}"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await; // key cache
    let accepted = app
        .ingest(
            &tenant.api_key,
            json!([{"id": "u3", "metric": "tokens", "value": 1}]),
        )
        .await;
    assert_eq!(accepted.status(), 202);
}

#[tokio::test]
async fn a_retry_that_pays_ends_dunning_and_the_tenant_stays_active() {
    let app = TestApp::spawn_with(short_cycles("2s", "1s,1h")).await;
    let tenant = invoiced_with_a_declining_card(&app, "pro", Duration::from_secs(2)).await;
    let customer = stripe_customer(&app, tenant.id).await;
    let (app_ref, id) = (&app, tenant.id);
    wait_for(
        "the first charge to fail",
        Duration::from_secs(30),
        || async move {
            stored_invoices(app_ref, id)
                .await
                .first()
                .is_some_and(|i| i.payment_attempts == 1)
        },
    )
    .await;
    // The card is fixed (in Stripe) before the retry, one second after the failure.
    set_default_card(&customer, "pm_card_visa").await;
    wait_for("the retry to pay", Duration::from_secs(30), || async move {
        stored_invoices(app_ref, id).await[0].status == "paid"
    })
    .await;
    let invoice = stored_invoices(&app, tenant.id).await.remove(0);
    assert_eq!(invoice.payment_attempts, 2);
    let at_stripe = stripe_get(&format!(
        "/v1/invoices/{}",
        invoice.stripe_invoice_id.as_deref().unwrap()
    ))
    .await;
    assert_eq!(at_stripe["status"], "paid");
    assert_eq!(
        tenant_record(&app, tenant.id).await.state,
        saas_core::TenantState::Active
    );
    // No retry is queued after the payment. The retry's job is marked done just after
    // the payment it made commits, so wait for that.
    let retries = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM jobs WHERE kind = 'billing.retry_payment'",
        )
        .fetch_all(&app.owner_pool)
        .await
        .unwrap()
    };
    wait_for(
        "the retry's job to end",
        Duration::from_secs(30),
        || async { retries().await.iter().all(|status| status != "pending") },
    )
    .await;
    let retries = retries().await;
    assert_eq!(retries, ["done"], "{retries:?}");
}

#[tokio::test]
async fn an_upgrade_in_the_period_is_prorated_by_us_and_identical_at_stripe() {
    let app = TestApp::spawn_with(short_cycles("6s", "1h")).await;
    let tenant = app.sign_up_tenant("starter", Some("pm_card_visa")).await;
    let usage = json!([{"id": "u1", "metric": "queries", "value": 120_000}]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    let upgrade = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/plan-changes",
            &json!({"plan": "pro"}),
        )
        .await;
    assert_eq!(upgrade.status(), 202);
    let (app_ref, key) = (&app, tenant.api_key.clone());
    wait_for("the upgrade", Duration::from_secs(10), || {
        let key = key.clone();
        async move {
            let me = app_ref.get_json(&key, "/v1/tenant").await;
            me["plan"] == "pro" && me["state"] == "active"
        }
    })
    .await;
    // Nothing moved at Stripe: no invoice beside the signup's, nothing pending.
    let customer = stripe_customer(&app, tenant.id).await;
    assert_eq!(stripe_invoices_by_reference(&customer).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    app.drain_relay().await;
    billing_run(&app).await;
    let id = tenant.id;
    wait_for("the invoice paid", Duration::from_secs(30), || async move {
        stored_invoices(app_ref, id)
            .await
            .first()
            .is_some_and(|i| i.status == "paid")
    })
    .await;
    let listed = app.get_json(&tenant.api_key, "/v1/invoices").await;
    let ours = listed["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "period")
        .unwrap()
        .clone();
    // Our prorations, recomputed here from the plan prices (starter 2,900, pro 19,900)
    // and when the upgrade took effect: fee x remaining / length, half up.
    let effective_at: chrono::DateTime<chrono::Utc> = {
        let mut tx = app.db.tenant_tx(tenant.id).await.unwrap();
        sqlx::query_scalar(
            "SELECT effective_at FROM tenant_transitions WHERE tenant_id = $1 AND kind = 'plan_change'",
        )
        .bind(tenant.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .unwrap()
    };
    let end: chrono::DateTime<chrono::Utc> = ours["period_end"].as_str().unwrap().parse().unwrap();
    let start: chrono::DateTime<chrono::Utc> =
        ours["period_start"].as_str().unwrap().parse().unwrap();
    let remaining = (end - effective_at).num_seconds();
    let length = (end - start).num_seconds();
    let part = |fee: i64| (fee * remaining * 2 + length) / (2 * length);
    let prorations: Vec<i64> = ours["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "proration")
        .map(|l| l["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(prorations, [-part(2_900), part(19_900)], "{ours}");
    let base_fees: Vec<i64> = ours["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "base_fee")
        .map(|l| l["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(base_fees, [19_900], "the next period's, in advance, on pro");
    let stored = stored_invoices(&app, tenant.id).await.remove(0);
    let at_stripe = stripe_get(&format!(
        "/v1/invoices/{}",
        stored.stripe_invoice_id.as_deref().unwrap()
    ))
    .await;
    assert_eq!(at_stripe["total"], ours["total"], "{at_stripe} vs {ours}");
    let mut theirs: Vec<i64> = at_stripe["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_i64().unwrap())
        .collect();
    let mut mine: Vec<i64> = ours["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_i64().unwrap())
        .filter(|a| *a != 0)
        .collect();
    theirs.sort();
    mine.sort();
    assert_eq!(theirs, mine);
    let sum: i64 = ours["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, ours["total"].as_i64().unwrap());
}

/// The real provider with a fault it cannot produce itself: every charge is refused
/// with a hard decline (localstripe has no test card for one), or refused outright.
struct Faulty {
    inner: StripeProvider,
    decline_with: Option<&'static str>,
    /// Charges are refused outright (no usable payment method, say), not declined.
    refuse: bool,
}

impl Faulty {
    fn declines_with(code: &'static str) -> Self {
        Self {
            inner: real_provider(),
            decline_with: Some(code),
            refuse: false,
        }
    }

    fn refuses() -> Self {
        Self {
            inner: real_provider(),
            decline_with: None,
            refuse: true,
        }
    }
}

#[async_trait]
impl PaymentProvider for Faulty {
    async fn ensure_customer(
        &self,
        d: &CustomerDetails,
        a: Attempt,
    ) -> Result<String, PaymentError> {
        self.inner.ensure_customer(d, a).await
    }
    async fn ensure_default_payment_method(
        &self,
        c: &str,
        p: &str,
        a: Attempt,
    ) -> Result<String, PaymentError> {
        self.inner.ensure_default_payment_method(c, p, a).await
    }
    async fn has_default_payment_method(&self, c: &str) -> Result<bool, PaymentError> {
        self.inner.has_default_payment_method(c).await
    }
    async fn push_invoice(
        &self,
        c: &str,
        d: &InvoiceDraft,
        a: Attempt,
    ) -> Result<ProviderInvoice, PaymentError> {
        self.inner.push_invoice(c, d, a).await
    }
    async fn find_invoice(
        &self,
        c: &str,
        r: &str,
    ) -> Result<Option<ProviderInvoice>, PaymentError> {
        self.inner.find_invoice(c, r).await
    }
    async fn get_invoice(&self, id: &str) -> Result<ProviderInvoice, PaymentError> {
        self.inner.get_invoice(id).await
    }
    async fn charge_invoice(&self, id: &str, key: &str) -> Result<ChargeOutcome, PaymentError> {
        if self.refuse {
            return Err(PaymentError::Refused(
                "402: This customer has no attached payment source".into(),
            ));
        }
        match self.decline_with {
            Some(code) => Ok(ChargeOutcome::Declined {
                code: code.into(),
                message: "Your card was declined.".into(),
                retryable: payments::declines::is_retryable(code),
            }),
            None => self.inner.charge_invoice(id, key).await,
        }
    }
    async fn void_invoice(&self, id: &str) -> Result<(), PaymentError> {
        self.inner.void_invoice(id).await
    }
    async fn replace_default_payment_method(
        &self,
        c: &str,
        p: &str,
    ) -> Result<String, PaymentError> {
        self.inner.replace_default_payment_method(c, p).await
    }
    async fn delete_customer(&self, c: &str) -> Result<(), PaymentError> {
        self.inner.delete_customer(c).await
    }
    async fn ping(&self) -> Result<(), PaymentError> {
        self.inner.ping().await
    }
}

fn real_provider() -> StripeProvider {
    provider_at(&integration_tests::Stack::from_env().stripe_url)
}

fn provider_at(url: &str) -> StripeProvider {
    StripeProvider::new(
        integration_tests::STRIPE_TEST_KEY,
        url,
        Duration::from_secs(10),
    )
    .unwrap()
}

fn collector(app: &TestApp, provider: Arc<dyn PaymentProvider>) -> Collector {
    Collector::new(
        app.db.clone(),
        provider,
        DunningSchedule {
            retries: vec![Duration::from_secs(3600)],
        },
    )
}

/// A tenant signed up with a card, with usage and an invoice run done while the
/// service's own collection waits (its jobs are held back), and the invoice id.
async fn tenant_with_a_draft(app: &TestApp) -> (TenantId, Uuid) {
    let tenant = app.sign_up_tenant("pro", Some("pm_card_visa")).await;
    let usage = json!([
        {"id": "a", "metric": "tokens", "value": 7_000_000},
        {"id": "b", "metric": "queries", "value": 150_000},
    ]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.drain_relay().await;
    let grace = Duration::from_millis(300);
    billing::invoices::run(
        &app.db,
        &app.clickhouse,
        chrono::Utc::now(),
        grace,
        billing::invoices::Collection::Stripe,
    )
    .await
    .unwrap();
    let invoice = stored_invoices(app, tenant.id).await.remove(0);
    assert_eq!(invoice.status, "draft");
    (tenant.id, invoice.id)
}

/// The service with its own collection held back: the test runs collections itself.
async fn spawn_with_collection_held_back() -> TestApp {
    let app = TestApp::spawn_with(short_cycles("2s", "1h")).await;
    // Collection jobs are never due in this test's database.
    sqlx::query(
        "CREATE FUNCTION hold_collection() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.kind = 'billing.collect' THEN NEW.run_at := now() + interval '1 day'; \
         END IF; RETURN NEW; END $$",
    )
    .execute(&app.owner_pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER hold_collection BEFORE INSERT ON jobs FOR EACH ROW \
         EXECUTE FUNCTION hold_collection()",
    )
    .execute(&app.owner_pool)
    .await
    .unwrap();
    app
}

#[tokio::test]
async fn a_collection_killed_after_each_stripe_call_and_run_again_makes_one_stripe_invoice() {
    let app = spawn_with_collection_held_back().await;
    let stripe = integration_tests::Stack::from_env().stripe_url;
    let target = stripe.trim_start_matches("http://").to_owned();
    let mut budget = 0;
    loop {
        let (tenant, invoice) = tenant_with_a_draft(&app).await;
        // The collection dies right after its request number `budget` reached Stripe.
        let dying = DyingCaller::start(target.clone(), budget).await;
        let first = collector(&app, Arc::new(provider_at(&dying.url())))
            .collect(tenant, invoice)
            .await;
        let completed = first.is_ok();
        // Then run again, twice at once, as two workers picking up the retried job.
        let whole = collector(&app, Arc::new(real_provider()));
        let (a, b) = tokio::join!(
            whole.collect(tenant, invoice),
            whole.collect(tenant, invoice)
        );
        a.unwrap();
        b.unwrap();
        let stored = stored_invoices(&app, tenant).await.remove(0);
        assert_eq!(
            stored.status, "paid",
            "killed after {budget} calls: {first:?}"
        );
        let customer = stripe_customer(&app, tenant).await;
        let at_stripe = stripe_invoices_by_reference(&customer).await;
        let twins = &at_stripe[&invoice.to_string()];
        assert_eq!(twins.len(), 1, "killed after {budget} calls");
        let stripe_invoice = stripe_get(&format!(
            "/v1/invoices/{}",
            twins[0]["id"].as_str().unwrap()
        ))
        .await;
        assert_eq!(stripe_invoice["total"].as_i64(), Some(stored.total));
        assert_eq!(stripe_invoice["status"], "paid");
        assert_eq!(
            stripe_invoice["attempt_count"], 1,
            "charged once: {stripe_invoice}"
        );
        assert_eq!(
            stored.stripe_invoice_id.as_deref(),
            stripe_invoice["id"].as_str()
        );
        let lines = stripe_invoice["lines"]["data"].as_array().unwrap().len();
        let mut references: Vec<&str> = stripe_invoice["lines"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["metadata"]["saas_line"].as_str().unwrap())
            .collect();
        references.dedup();
        assert_eq!(references.len(), lines, "no line twice: {stripe_invoice}");
        // Nothing of ours left pending for a later invoice.
        let pending = stripe_get(&format!("/v1/invoiceitems?customer={customer}")).await;
        assert!(
            pending["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|item| !item["invoice"].is_null()),
            "killed after {budget} calls: {pending}"
        );
        assert_eq!(stored.payment_attempts, 1);
        if completed {
            // Every request of a whole collection has been cut once: create, each
            // line, finalize, pay.
            assert!(budget >= lines + 3, "{budget} calls for {lines} lines");
            break;
        }
        assert!(budget < 40, "a collection that never completes");
        budget += 1;
        drop(dying);
    }
}

#[tokio::test]
async fn a_hard_decline_is_not_retried_and_suspends_at_once() {
    let app = spawn_with_collection_held_back().await;
    let (tenant, invoice) = tenant_with_a_draft(&app).await;
    collector(&app, Arc::new(Faulty::declines_with("stolen_card")))
        .collect(tenant, invoice)
        .await
        .unwrap();
    let stored = stored_invoices(&app, tenant).await.remove(0);
    assert_eq!(stored.status, "open");
    assert_eq!(stored.payment_attempts, 1);
    assert_eq!(stored.dunning, "hard_decline");
    let retries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'billing.retry_payment'")
            .fetch_one(&app.owner_pool)
            .await
            .unwrap();
    assert_eq!(retries, 0, "a hard decline is not retried");
    assert_eq!(
        tenant_record(&app, tenant).await.state,
        saas_core::TenantState::Suspended
    );

    // An operator lets the tenant back in without payment: dunning does not overrule
    // that, however often its verdict on this invoice is carried out again.
    let response = app
        .operator_post(
            &format!("/v1/admin/tenants/{tenant}/transitions"),
            &json!({"to": "active", "reason": "paying by bank transfer"}),
        )
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let whole = collector(&app, Arc::new(real_provider()));
    whole.uphold_dunning(tenant, invoice).await.unwrap();
    whole.collect(tenant, invoice).await.unwrap();
    assert_eq!(
        tenant_record(&app, tenant).await.state,
        saas_core::TenantState::Active
    );
}

#[tokio::test]
async fn a_charge_refused_without_a_decline_goes_through_dunning_too() {
    let app = spawn_with_collection_held_back().await;
    let (tenant, invoice) = tenant_with_a_draft(&app).await;
    collector(&app, Arc::new(Faulty::refuses()))
        .collect(tenant, invoice)
        .await
        .unwrap();
    let stored = stored_invoices(&app, tenant).await.remove(0);
    assert_eq!(stored.status, "open");
    assert_eq!(stored.payment_attempts, 1);
    assert_eq!(stored.dunning, "retrying", "a retry is scheduled");
    let retries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'billing.retry_payment'")
            .fetch_one(&app.owner_pool)
            .await
            .unwrap();
    assert_eq!(retries, 1);
}

#[tokio::test]
async fn an_invoice_voided_at_stripe_does_not_stand_between_the_tenant_and_reactivation() {
    let app = TestApp::spawn_with(short_cycles("2s", "1s")).await;
    let tenant = invoiced_with_a_declining_card(&app, "starter", Duration::from_secs(2)).await;
    wait_until_suspended(&app, tenant.id).await;
    let invoice = stored_invoices(&app, tenant.id).await.remove(0);
    let stripe_id = invoice.stripe_invoice_id.unwrap();
    let voided = stripe_post(&format!("/v1/invoices/{stripe_id}/void"), &[]).await;
    assert_eq!(voided["status"], "void", "{voided}");
    let back = app
        .post_as(
            &tenant.api_key,
            "/v1/tenant/reactivation",
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(back.status(), 202, "{}", back.text().await.unwrap());
    assert_eq!(stored_invoices(&app, tenant.id).await[0].status, "void");
    assert_eq!(
        tenant_record(&app, tenant.id).await.state,
        saas_core::TenantState::Active
    );
}

#[tokio::test]
async fn collections_whose_jobs_gave_up_are_queued_again() {
    let app = spawn_with_collection_held_back().await;
    let (tenant, invoice) = tenant_with_a_draft(&app).await;
    let now = chrono::Utc::now();
    let stalled_after = Duration::from_secs(3600);
    // Its job is still pending: nothing to do.
    let requeued = billing::collection::requeue_stalled(&app.db, now, stalled_after)
        .await
        .unwrap();
    assert_eq!(requeued, 0);
    // The job ran out of attempts (a long outage), and the invoice is old by now.
    sqlx::query("UPDATE jobs SET status = 'dead' WHERE kind = 'billing.collect'")
        .execute(&app.owner_pool)
        .await
        .unwrap();
    let later = now + chrono::TimeDelta::hours(2);
    let requeued = billing::collection::requeue_stalled(&app.db, later, stalled_after)
        .await
        .unwrap();
    assert_eq!(requeued, 1);
    // Again within the hour: not queued twice.
    sqlx::query("UPDATE jobs SET status = 'dead' WHERE kind = 'billing.collect'")
        .execute(&app.owner_pool)
        .await
        .unwrap();
    let again = billing::collection::requeue_stalled(&app.db, later, stalled_after)
        .await
        .unwrap();
    assert_eq!(again, 0, "once an hour at most");
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'billing.collect' AND payload->>'invoice_id' = $1",
    )
    .bind(invoice.to_string())
    .fetch_one(&app.owner_pool)
    .await
    .unwrap();
    assert_eq!(jobs, 2, "the first job and one requeued in this hour");
    collector(&app, Arc::new(real_provider()))
        .collect(tenant, invoice)
        .await
        .unwrap();
    assert_eq!(stored_invoices(&app, tenant).await[0].status, "paid");
}

#[tokio::test]
async fn an_invoice_stripe_cannot_charge_is_flagged_for_an_operator_not_retried() {
    let app = spawn_with_collection_held_back().await;
    let tenant = app.sign_up_tenant("pro", Some("pm_card_visa")).await;
    // A trillion tokens: about $10 million of overage, above Stripe's largest charge.
    let usage = json!([{"id": "huge", "metric": "tokens", "value": 1_000_000_000_000_u64}]);
    assert_eq!(app.ingest(&tenant.api_key, usage).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.drain_relay().await;
    billing_run(&app).await;
    let invoice = stored_invoices(&app, tenant.id).await.remove(0);
    assert!(
        invoice.total > billing::collection::MAX_CHARGE,
        "{invoice:?}"
    );
    let outcome = collector(&app, Arc::new(real_provider()))
        .collect(tenant.id, invoice.id)
        .await;
    assert!(
        matches!(
            outcome,
            Err(billing::collection::CollectError::TooLarge { .. })
        ),
        "{outcome:?}"
    );
    // Nothing went to Stripe beside the signup invoice.
    let customer = stripe_customer(&app, tenant.id).await;
    assert_eq!(stripe_invoices_by_reference(&customer).await.len(), 1);
    // Flagged once for an operator, and left alone by the sweep of stalled collections.
    let overview = app.operator_get("/v1/admin/overview").await;
    let flagged = overview["unpaid_invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == json!(invoice.id.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("{overview}"));
    assert!(
        flagged["collection_error"]
            .as_str()
            .is_some_and(|e| e.contains("above")),
        "{flagged}"
    );
    sqlx::query("UPDATE jobs SET status = 'dead' WHERE kind = 'billing.collect'")
        .execute(&app.owner_pool)
        .await
        .unwrap();
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(2);
    let requeued = billing::collection::requeue_stalled(&app.db, later, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(requeued, 0, "not retried on its own");
}
