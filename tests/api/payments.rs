//! The Stripe payment provider against the stack's localstripe. Every operation is
//! retried to show that a retry changes nothing.

use std::time::Duration;

use integration_tests::{STRIPE_TEST_KEY, Stack, declining_card, stripe_get, stripe_post};
use payments::stripe_provider::StripeProvider;
use payments::{
    Attempt, ChargeLine, ChargeOutcome, CustomerDetails, InvoiceDraft, PaymentError,
    PaymentProvider,
};

fn provider() -> StripeProvider {
    StripeProvider::new(
        STRIPE_TEST_KEY,
        &Stack::from_env().stripe_url,
        Duration::from_secs(10),
    )
    .unwrap()
}

fn details() -> CustomerDetails {
    let reference = uuid::Uuid::new_v4().simple().to_string();
    CustomerDetails {
        email: format!("billing+{reference}@example.com"),
        name: "Acme Test".into(),
        reference,
    }
}

/// An invoice of ours: a base fee, a usage line and a credit.
fn draft() -> InvoiceDraft {
    let reference = uuid::Uuid::new_v4().to_string();
    let line = |position: usize, amount: i64, description: &str| ChargeLine {
        reference: format!("{reference}:{position}"),
        amount,
        description: description.into(),
    };
    InvoiceDraft {
        lines: vec![
            line(0, 19_900, "Pro plan, next period (in advance)"),
            line(
                2,
                4_321,
                "tokens past the included 1000000, tier 1: quantity 4321",
            ),
            line(5, -1_450, "Unused time on Starter plan"),
        ],
        currency: "usd".into(),
        description: format!("Invoice {reference}"),
        reference,
    }
}

async fn customer_with(stripe: &StripeProvider, card: &str) -> String {
    let customer = stripe
        .ensure_customer(&details(), Attempt::First)
        .await
        .unwrap();
    stripe
        .ensure_default_payment_method(&customer, card, Attempt::First)
        .await
        .unwrap();
    customer
}

#[tokio::test]
async fn customers_and_payment_methods_are_created_once() {
    let stripe = provider();
    let who = details();
    let customer = stripe.ensure_customer(&who, Attempt::First).await.unwrap();
    assert_eq!(
        stripe.ensure_customer(&who, Attempt::Retry).await.unwrap(),
        customer,
        "a retry finds the customer"
    );
    assert!(!stripe.has_default_payment_method(&customer).await.unwrap());
    let card = stripe
        .ensure_default_payment_method(&customer, "pm_card_visa", Attempt::First)
        .await
        .unwrap();
    let again = stripe
        .ensure_default_payment_method(&customer, "pm_card_visa", Attempt::Retry)
        .await
        .unwrap();
    assert_eq!(card, again, "a retry keeps the default card");
    assert!(stripe.has_default_payment_method(&customer).await.unwrap());
    stripe.delete_customer(&customer).await.unwrap();
    stripe.delete_customer(&customer).await.unwrap();
}

#[tokio::test]
async fn an_invoice_is_composed_of_our_lines_only_once_and_charged_once() {
    let stripe = provider();
    let customer = customer_with(&stripe, "pm_card_visa").await;
    // A pending item of the customer's made elsewhere must not be swept onto ours.
    stripe_post(
        "/v1/invoiceitems",
        &[
            ("customer", customer.as_str()),
            ("currency", "usd"),
            ("amount", "777"),
        ],
    )
    .await;
    let draft = draft();
    let pushed = stripe
        .push_invoice(&customer, &draft, Attempt::First)
        .await
        .unwrap();
    assert_eq!(pushed.differs_from(&draft), None, "{pushed:?}");
    assert_eq!(pushed.status, "open");
    assert_eq!(pushed.total, 19_900 + 4_321 - 1_450);
    assert!(!pushed.auto_advance, "Stripe never advances it on its own");
    assert_eq!(pushed.attempt_count, 0);
    let again = stripe
        .push_invoice(&customer, &draft, Attempt::Retry)
        .await
        .unwrap();
    assert_eq!(again, pushed, "a retry finds it and adds nothing");
    let listed = stripe_get(&format!("/v1/invoices?customer={customer}")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");

    for _ in 0..2 {
        let charged = stripe
            .charge_invoice(&pushed.id, &format!("charge-{}", draft.reference))
            .await
            .unwrap();
        assert_eq!(charged, ChargeOutcome::Paid);
    }
    let paid = stripe.get_invoice(&pushed.id).await.unwrap();
    assert_eq!(paid.status, "paid");
    assert_eq!(paid.attempt_count, 1, "charged once");
}

#[tokio::test]
async fn a_declining_card_is_reported_as_declined_and_the_invoice_can_be_voided() {
    let stripe = provider();
    let customer = customer_with(&stripe, &declining_card().await).await;
    let draft = draft();
    let pushed = stripe
        .push_invoice(&customer, &draft, Attempt::First)
        .await
        .unwrap();
    for attempt in 1..=2 {
        let outcome = stripe
            .charge_invoice(&pushed.id, &format!("charge-{}-{attempt}", pushed.id))
            .await
            .unwrap();
        assert!(
            matches!(&outcome, ChargeOutcome::Declined { .. }),
            "{outcome:?}"
        );
        let open = stripe.get_invoice(&pushed.id).await.unwrap();
        assert_eq!(open.status, "open");
        // Stripe counts the first attempt only (attempts made by hand after it are not
        // counted: https://docs.stripe.com/api/invoices/object#invoice_object-attempt_count).
        assert_eq!(open.attempt_count, 1, "attempt {attempt}");
    }
    stripe.void_invoice(&pushed.id).await.unwrap();
    stripe.void_invoice(&pushed.id).await.unwrap();
    let closed = stripe
        .charge_invoice(&pushed.id, &format!("charge-{}-after-void", pushed.id))
        .await
        .unwrap();
    assert_eq!(
        closed,
        ChargeOutcome::Closed {
            status: "void".into()
        }
    );
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

    let unreachable = StripeProvider::new(
        STRIPE_TEST_KEY,
        "http://127.0.0.1:9",
        Duration::from_secs(5),
    )
    .unwrap();
    let error = unreachable.ping().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
}
