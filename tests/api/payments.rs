//! The Stripe payment provider against the stack's localstripe. Every operation is
//! retried to show that a retry changes nothing.

use integration_tests::{STRIPE_TEST_KEY, Stack, declining_card};
use payments::stripe_provider::StripeProvider;
use payments::{Attempt, CustomerDetails, PaymentError, PaymentProvider, RecurringPlan};

fn provider() -> StripeProvider {
    StripeProvider::new(STRIPE_TEST_KEY, &Stack::from_env().stripe_url).unwrap()
}

fn details() -> CustomerDetails {
    let reference = uuid::Uuid::new_v4().simple().to_string();
    CustomerDetails {
        email: format!("billing+{reference}@example.com"),
        name: "Acme Test".into(),
        reference,
    }
}

fn plan(code: &str, base_fee: i64) -> RecurringPlan {
    RecurringPlan {
        code: code.into(),
        currency: "usd".into(),
        base_fee,
    }
}

#[tokio::test]
async fn customers_payment_methods_and_subscriptions_are_created_once() {
    let stripe = provider();
    let who = details();
    let customer = stripe.ensure_customer(&who, Attempt::First).await.unwrap();
    assert_eq!(
        stripe.ensure_customer(&who, Attempt::Retry).await.unwrap(),
        customer,
        "a retry finds the customer"
    );

    let card = stripe
        .ensure_default_payment_method(&customer, "pm_card_visa", Attempt::First)
        .await
        .unwrap();
    let again = stripe
        .ensure_default_payment_method(&customer, "pm_card_visa", Attempt::Retry)
        .await
        .unwrap();
    assert_eq!(card, again, "a retry keeps the default card");

    let pro = plan("pro", 19_900);
    let subscription = stripe
        .ensure_subscription(&customer, &pro, Attempt::First)
        .await
        .unwrap();
    assert_eq!(subscription.status, "active");
    assert_eq!(subscription.plan_id, "saas_pro_usd_19900");
    let retried = stripe
        .ensure_subscription(&customer, &pro, Attempt::Retry)
        .await
        .unwrap();
    assert_eq!(
        retried.id, subscription.id,
        "a retry finds the subscription"
    );

    let upgraded = stripe
        .change_plan(&subscription.id, &plan("enterprise", 99_900), true)
        .await
        .unwrap();
    assert_eq!(upgraded.plan_id, "saas_enterprise_usd_99900");
    let unchanged = stripe
        .change_plan(&subscription.id, &plan("enterprise", 99_900), true)
        .await
        .unwrap();
    assert_eq!(unchanged, upgraded, "a retried plan change changes nothing");

    stripe.delete_customer(&customer).await.unwrap();
    stripe.delete_customer(&customer).await.unwrap();
}

#[tokio::test]
async fn a_declining_card_is_reported_as_declined() {
    let stripe = provider();
    let customer = stripe
        .ensure_customer(&details(), Attempt::First)
        .await
        .unwrap();
    let card = declining_card().await;
    stripe
        .ensure_default_payment_method(&customer, &card, Attempt::First)
        .await
        .unwrap();
    let starter = plan("starter", 2_900);
    for attempt in 0..2 {
        match stripe
            .ensure_subscription(&customer, &starter, Attempt::Retry)
            .await
        {
            Err(PaymentError::Declined { code, .. }) => assert_eq!(code, "first_payment_failed"),
            other => panic!("attempt {attempt}: expected a decline, got {other:?}"),
        }
    }
    // A good card then succeeds, on a fresh subscription; the declined ones were canceled.
    let card = stripe_card(&customer).await;
    set_default(&customer, &card).await;
    let subscription = stripe
        .ensure_subscription(&customer, &starter, Attempt::Retry)
        .await
        .unwrap();
    assert_eq!(subscription.status, "active");
    assert_eq!(
        stripe
            .ensure_subscription(&customer, &starter, Attempt::Retry)
            .await
            .unwrap()
            .id,
        subscription.id
    );
}

/// Attaches a good test card to the customer and returns its id.
async fn stripe_card(customer: &str) -> String {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/v1/payment_methods/pm_card_visa/attach",
            Stack::from_env().stripe_url
        ))
        .basic_auth(STRIPE_TEST_KEY, Some(""))
        .form(&[("customer", customer)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["id"].as_str().unwrap().to_owned()
}

async fn set_default(customer: &str, card: &str) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/customers/{customer}",
            Stack::from_env().stripe_url
        ))
        .basic_auth(STRIPE_TEST_KEY, Some(""))
        .form(&[("invoice_settings[default_payment_method]", card)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unknown_payment_methods_are_refused_and_an_unreachable_server_is_unavailable() {
    let stripe = provider();
    let customer = stripe
        .ensure_customer(&details(), Attempt::First)
        .await
        .unwrap();
    let error = stripe
        .ensure_default_payment_method(&customer, "pm_does_not_exist", Attempt::Retry)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PaymentError::NotFound(_) | PaymentError::Refused(_)),
        "{error:?}"
    );
    stripe.ping().await.unwrap();

    let unreachable = StripeProvider::new(STRIPE_TEST_KEY, "http://127.0.0.1:9").unwrap();
    let error = unreachable.ping().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
}

#[tokio::test]
async fn concurrent_first_subscriptions_to_a_new_plan_all_succeed() {
    // A price never used before makes a Stripe plan that does not exist yet; eight
    // processes (providers with their own caches) race to create it.
    let fee = 10_000 + i64::from(rand_suffix() % 80_000);
    let new_plan = plan("starter", fee);
    let results = futures_util::future::join_all((0..8).map(|_| {
        let new_plan = new_plan.clone();
        async move {
            let stripe = provider();
            let customer = stripe
                .ensure_customer(&details(), Attempt::First)
                .await
                .unwrap();
            stripe
                .ensure_default_payment_method(&customer, "pm_card_visa", Attempt::First)
                .await
                .unwrap();
            stripe
                .ensure_subscription(&customer, &new_plan, Attempt::First)
                .await
        }
    }))
    .await;
    for result in results {
        let subscription = result.expect("losing the race to create the plan is not an error");
        assert_eq!(subscription.plan_id, format!("saas_starter_usd_{fee}"));
        assert_eq!(subscription.status, "active");
    }
}

fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}
