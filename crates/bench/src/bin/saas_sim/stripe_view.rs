//! Stripe's side of the books: the invoices, lines and charges the Stripe fake holds,
//! read through its API as any client would.

use std::collections::HashMap;

use serde_json::Value;

/// Where the Stripe fake is, and the key to reach it with.
pub struct StripeSource {
    pub base: String,
    pub key: String,
}

impl StripeSource {
    /// A form-encoded POST, as Stripe's API takes them.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Value> {
        let answer = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .basic_auth(&self.key, Some(""))
            .form(form)
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "{path}: {}", answer.status());
        Ok(answer.json().await?)
    }

    /// Every customer, read page by page.
    pub async fn customers(&self) -> anyhow::Result<Vec<Value>> {
        self.customers_where(&[]).await
    }

    /// The customer with `email`, by the list's own filter ("A case-sensitive filter on
    /// the list based on the customer's email field",
    /// https://docs.stripe.com/api/customers/list#list_customers-email).
    pub async fn customer_with_email(&self, email: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .customers_where(&[("email", email)])
            .await?
            .first()
            .and_then(|c| c["id"].as_str())
            .map(str::to_owned))
    }

    async fn customers_where(&self, filter: &[(&str, &str)]) -> anyhow::Result<Vec<Value>> {
        let client = reqwest::Client::new();
        let (mut customers, mut after) = (Vec::new(), None::<String>);
        loop {
            let mut url = reqwest::Url::parse(&format!("{}/v1/customers", self.base))?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", "100");
                query.extend_pairs(filter);
                if let Some(after) = &after {
                    query.append_pair("starting_after", after);
                }
            }
            let page: Value = client
                .get(url)
                .basic_auth(&self.key, Some(""))
                .send()
                .await?
                .json()
                .await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|c| c["id"].as_str())
                .map(str::to_owned);
            customers.extend(data);
            if page["has_more"] != true || after.is_none() {
                return Ok(customers);
            }
        }
    }
}

/// The tenant's current period and its usage, as `GET /v1/usage/summary` shows them.
/// Every invoice the Stripe fake holds, by our invoice id (its `saas_invoice` metadata).
pub struct StripeView {
    pub by_reference: HashMap<String, Vec<Value>>,
    pub invoices: usize,
}

impl StripeView {
    pub async fn load(base: &str, key: &str) -> anyhow::Result<StripeView> {
        let client = reqwest::Client::new();
        let mut by_reference: HashMap<String, Vec<Value>> = HashMap::new();
        let mut after: Option<String> = None;
        let mut invoices = 0;
        loop {
            let mut url = format!("{base}/v1/invoices?limit=100");
            if let Some(after) = &after {
                url.push_str(&format!("&starting_after={after}"));
            }
            let page: Value = client
                .get(url)
                .basic_auth(key, Some(""))
                .send()
                .await?
                .json()
                .await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            for invoice in &data {
                invoices += 1;
                if let Some(reference) = invoice["metadata"]["saas_invoice"].as_str() {
                    by_reference
                        .entry(reference.to_owned())
                        .or_default()
                        .push(invoice.clone());
                }
            }
            after = data
                .last()
                .and_then(|i| i["id"].as_str())
                .map(str::to_owned);
            if page["has_more"] != true || after.is_none() {
                return Ok(StripeView {
                    by_reference,
                    invoices,
                });
            }
        }
    }
}
