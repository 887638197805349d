//! Direct calls to the stack's localstripe, to look behind the service's back.

use serde_json::Value;

use crate::{STRIPE_TEST_KEY, Stack};

/// GET `path` (e.g. `/v1/customers/cus_...`) as JSON.
pub async fn stripe_get(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", Stack::from_env().stripe_url))
        .basic_auth(STRIPE_TEST_KEY, Some(""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POST a form to `path` and return the JSON answer.
pub async fn stripe_post(path: &str, form: &[(&str, &str)]) -> Value {
    reqwest::Client::new()
        .post(format!("{}{path}", Stack::from_env().stripe_url))
        .basic_auth(STRIPE_TEST_KEY, Some(""))
        .form(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A card payment method that attaches but whose charges are declined (Stripe's test
/// card 4000000000000341); its id.
pub async fn declining_card() -> String {
    let created = stripe_post(
        "/v1/payment_methods",
        &[
            ("type", "card"),
            ("card[number]", "4000000000000341"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ],
    )
    .await;
    created["id"].as_str().unwrap().to_owned()
}
