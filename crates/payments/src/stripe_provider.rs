//! [`PaymentProvider`] on Stripe, through async-stripe.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use stripe::{Client, ClientBuilder, StripeError};
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_billing::invoice::{
    CreateInvoice, CreateInvoicePendingInvoiceItemsBehavior, FinalizeInvoiceInvoice, ListInvoice,
    PayInvoice, RetrieveInvoice,
};
use stripe_billing::invoice_item::{CreateInvoiceItem, ListInvoiceItem};
use stripe_billing::invoice_line_item::ListInvoiceInvoiceLineItem;
use stripe_billing::plan::{CreatePlan, CreatePlanProduct, RetrievePlan};
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, ListSubscription,
    ListSubscriptionStatus, UpdateSubscription, UpdateSubscriptionItems,
    UpdateSubscriptionProrationBehavior,
};
use stripe_billing::{Invoice, InvoiceLineItem, InvoiceStatus};
use stripe_billing::{PlanInterval, PlanUsageType, Subscription, SubscriptionStatus};
use stripe_core::customer::{
    CreateCustomer, DeleteCustomer, ListCustomer, RetrieveCustomer, RetrieveCustomerReturned,
    UpdateCustomer, UpdateCustomerInvoiceSettings,
};
use stripe_payment::payment_method::AttachPaymentMethod;
use stripe_product::product::{CreateProduct, RetrieveProduct};
use stripe_types::{Currency, Expandable};

use crate::provider::{
    Attempt, ChargeLine, ChargeOutcome, CustomerDetails, LineOrigin, PaymentError, PaymentProvider,
    ProviderInvoice, ProviderLine, RecurringPlan, SubscriptionRef,
};

/// Metadata key holding our reference on every customer we create.
const REFERENCE_KEY: &str = "saas_reference";
/// Metadata key holding our invoice id on every provider invoice we create.
const INVOICE_KEY: &str = "saas_invoice";
/// Metadata key holding our line reference on every invoice item we create.
const LINE_KEY: &str = "saas_line";
/// The one product our plans hang off.
const PRODUCT_ID: &str = "saas_platform";

pub struct StripeProvider {
    client: Client,
    /// Stripe plans known to exist. A plan id carries its price and is never changed, so
    /// once seen it need not be looked up again by this process.
    known_plans: Mutex<HashSet<String>>,
    /// Set once the server turned out to have no finalize call (some Stripe-compatible
    /// servers finalize on payment instead): saves a round trip per charge after that.
    finalize_unsupported: AtomicBool,
}

impl StripeProvider {
    /// A subscription whose first payment failed: cancel it, so that nothing is left
    /// to charge later, and report the decline.
    async fn give_up_on(&self, subscription: &Subscription) -> PaymentError {
        if let Err(error) = CancelSubscription::new(subscription.id.as_str())
            .send(&self.client)
            .await
        {
            tracing::warn!(subscription = %subscription.id, %error, "could not cancel an unpaid subscription");
        }
        PaymentError::Declined {
            code: "first_payment_failed".into(),
            message: "the first payment of the subscription was declined".into(),
        }
    }

    pub fn new(secret_key: &str, api_base: &str) -> Result<Self, PaymentError> {
        let client = ClientBuilder::new(secret_key)
            .url(api_base)
            .build()
            .map_err(|error| PaymentError::Unexpected(error.to_string()))?;
        Ok(Self {
            client,
            known_plans: Mutex::default(),
            finalize_unsupported: AtomicBool::new(false),
        })
    }

    /// Our plan's id at Stripe. It carries the price, so a price change makes a new
    /// Stripe plan instead of silently repricing existing subscriptions.
    fn plan_id(plan: &RecurringPlan) -> String {
        format!("saas_{}_{}_{}", plan.code, plan.currency, plan.base_fee)
    }

    async fn ensure_plan(&self, plan: &RecurringPlan) -> Result<String, PaymentError> {
        let id = Self::plan_id(plan);
        if self.plan_is_known(&id) {
            return Ok(id);
        }
        match RetrievePlan::new(id.as_str()).send(&self.client).await {
            Ok(_) => return Ok(self.remember_plan(id)),
            Err(error) => match classify(error) {
                PaymentError::NotFound(_) => {}
                other => return Err(other),
            },
        }
        self.ensure_product().await?;
        let currency: Currency = plan
            .currency
            .parse()
            .map_err(|_| PaymentError::Unexpected(format!("currency {}", plan.currency)))?;
        let created = CreatePlan::new(currency, PlanInterval::Month)
            .id(id.as_str())
            .product(CreatePlanProduct::Id(PRODUCT_ID.to_owned()))
            .amount(plan.base_fee)
            .usage_type(PlanUsageType::Licensed)
            .customize()
            .request_strategy(idempotent(&format!("plan-{id}"))?)
            .send(&self.client)
            .await;
        match created {
            Ok(_) => Ok(self.remember_plan(id)),
            // Created meanwhile by another worker: just as good.
            Err(error) if is_already_exists(&error) => Ok(self.remember_plan(id)),
            Err(error) => Err(classify(error)),
        }
    }

    /// The customer's default payment method, if it has one.
    async fn default_payment_method(&self, customer: &str) -> Result<Option<String>, PaymentError> {
        match RetrieveCustomer::new(customer)
            .send(&self.client)
            .await
            .map_err(classify)?
        {
            RetrieveCustomerReturned::Customer(existing) => Ok(existing
                .invoice_settings
                .as_ref()
                .and_then(|s| s.default_payment_method.as_ref())
                .map(expandable_id)),
            RetrieveCustomerReturned::DeletedCustomer(_) => Err(PaymentError::NotFound(format!(
                "customer {customer} is deleted"
            ))),
        }
    }

    /// Every subscription of the customer to the Stripe plan `plan_id`, in any status.
    async fn subscriptions_to(
        &self,
        customer: &str,
        plan_id: &str,
    ) -> Result<Vec<Subscription>, PaymentError> {
        Ok(ListSubscription::new()
            .customer(customer)
            .status(ListSubscriptionStatus::All)
            .send(&self.client)
            .await
            .map_err(classify)?
            .data
            .into_iter()
            .filter(|s| subscription_plan(s).as_deref() == Some(plan_id))
            .collect())
    }

    fn plan_is_known(&self, id: &str) -> bool {
        self.known_plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(id)
    }

    fn remember_plan(&self, id: String) -> String {
        self.known_plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.clone());
        id
    }

    async fn ensure_product(&self) -> Result<(), PaymentError> {
        if RetrieveProduct::new(PRODUCT_ID)
            .send(&self.client)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let created = CreateProduct::new("SaaS platform")
            .id(PRODUCT_ID)
            .customize()
            .request_strategy(idempotent("product-saas-platform")?)
            .send(&self.client)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error) if is_already_exists(&error) => Ok(()),
            Err(error) => Err(classify(error)),
        }
    }

    /// The invoice with all of its lines: Stripe embeds only the first page of them.
    async fn complete(&self, invoice: &Invoice) -> Result<ProviderInvoice, PaymentError> {
        let mut lines = invoice.lines.data.clone();
        if invoice.lines.has_more
            && let Some(id) = &invoice.id
        {
            lines.clear();
            let mut after: Option<String> = None;
            loop {
                let mut request = ListInvoiceInvoiceLineItem::new(id.clone()).limit(100);
                if let Some(last) = &after {
                    request = request.starting_after(last.as_str());
                }
                let page = request.send(&self.client).await.map_err(classify)?;
                after = page.data.last().map(|line| line.id.to_string());
                lines.extend(page.data);
                if !page.has_more || after.is_none() {
                    break;
                }
            }
        }
        provider_invoice(invoice, &lines)
    }

    async fn find_customer(
        &self,
        details: &CustomerDetails,
    ) -> Result<Option<String>, PaymentError> {
        let customers = ListCustomer::new()
            .email(details.email.as_str())
            .limit(100)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(customers
            .data
            .into_iter()
            .find(|c| {
                c.metadata.as_ref().and_then(|m| m.get(REFERENCE_KEY)) == Some(&details.reference)
            })
            .map(|c| c.id.to_string()))
    }
}

#[async_trait]
impl PaymentProvider for StripeProvider {
    async fn ensure_customer(
        &self,
        details: &CustomerDetails,
        attempt: Attempt,
    ) -> Result<String, PaymentError> {
        if attempt == Attempt::Retry
            && let Some(id) = self.find_customer(details).await?
        {
            return Ok(id);
        }
        let metadata = HashMap::from([(REFERENCE_KEY.to_owned(), details.reference.clone())]);
        let customer = CreateCustomer::new()
            .email(details.email.as_str())
            .name(details.name.as_str())
            .metadata(metadata)
            .customize()
            .request_strategy(idempotent(&format!("customer-{}", details.reference))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(customer.id.to_string())
    }

    async fn ensure_default_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
        attempt: Attempt,
    ) -> Result<String, PaymentError> {
        if attempt == Attempt::Retry
            && let Some(current) = self.default_payment_method(customer).await?
        {
            return Ok(current);
        }
        self.replace_default_payment_method(customer, payment_method)
            .await
    }

    async fn replace_default_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
    ) -> Result<String, PaymentError> {
        let attached = AttachPaymentMethod::new(payment_method)
            .customer(customer)
            .send(&self.client)
            .await
            .map_err(classify)?;
        let settings = UpdateCustomerInvoiceSettings {
            default_payment_method: Some(attached.id.to_string()),
            ..Default::default()
        };
        UpdateCustomer::new(customer)
            .invoice_settings(settings)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(attached.id.to_string())
    }

    async fn ensure_invoice_item(
        &self,
        customer: &str,
        currency: &str,
        line: &ChargeLine,
        attempt: Attempt,
    ) -> Result<(), PaymentError> {
        if attempt == Attempt::Retry {
            let pending = ListInvoiceItem::new()
                .customer(customer)
                .limit(100)
                .send(&self.client)
                .await
                .map_err(classify)?;
            let exists = pending.data.iter().any(|item| {
                item.invoice.is_none()
                    && item
                        .metadata
                        .as_ref()
                        .and_then(|m| m.get(LINE_KEY))
                        .is_some_and(|r| r == &line.reference)
            });
            if exists {
                return Ok(());
            }
        }
        let currency: Currency = currency
            .parse()
            .map_err(|_| PaymentError::Unexpected(format!("currency {currency}")))?;
        let metadata = HashMap::from([(LINE_KEY.to_owned(), line.reference.clone())]);
        let mut create = CreateInvoiceItem::new()
            .customer(customer)
            .currency(currency)
            .amount(line.amount)
            .description(line.description.as_str())
            .metadata(metadata);
        if let Some(subscription) = &line.subscription {
            create = create.subscription(subscription.as_str());
        }
        create
            .customize()
            .request_strategy(idempotent(&format!("invoice-item-{}", line.reference))?)
            .send(&self.client)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn ensure_invoice(
        &self,
        customer: &str,
        subscription: Option<&str>,
        reference: &str,
        attempt: Attempt,
    ) -> Result<ProviderInvoice, PaymentError> {
        if attempt == Attempt::Retry
            && let Some(found) = self.find_invoice(customer, reference).await?
        {
            return Ok(found);
        }
        let metadata = HashMap::from([(INVOICE_KEY.to_owned(), reference.to_owned())]);
        let mut create = CreateInvoice::new()
            .customer(customer)
            .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Include)
            .metadata(metadata);
        if let Some(subscription) = subscription {
            create = create.subscription(subscription);
        }
        let created = create
            .customize()
            .request_strategy(idempotent(&format!("invoice-{reference}"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        self.complete(&created).await
    }

    async fn find_invoice(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<ProviderInvoice>, PaymentError> {
        let listed = ListInvoice::new()
            .customer(customer)
            .limit(100)
            .send(&self.client)
            .await
            .map_err(classify)?;
        let invoices = listed.data.iter().find(|invoice| {
            invoice
                .metadata
                .as_ref()
                .and_then(|m| m.get(INVOICE_KEY))
                .is_some_and(|r| r == reference)
        });
        match invoices {
            Some(found) => self.complete(found).await.map(Some),
            None => Ok(None),
        }
    }

    async fn get_invoice(&self, id: &str) -> Result<ProviderInvoice, PaymentError> {
        let invoice = RetrieveInvoice::new(id)
            .send(&self.client)
            .await
            .map_err(classify)?;
        self.complete(&invoice).await
    }

    async fn charge_invoice(
        &self,
        id: &str,
        attempt_key: &str,
    ) -> Result<ChargeOutcome, PaymentError> {
        let current = self.get_invoice(id).await?;
        match current.status.as_str() {
            "paid" => return Ok(ChargeOutcome::Paid),
            "draft" if !self.finalize_unsupported.load(Ordering::Relaxed) => {
                // Stripe charges finalized invoices only. Stripe-compatible servers
                // without the finalize call finalize on payment instead.
                if let Err(error) = FinalizeInvoiceInvoice::new(id).send(&self.client).await {
                    match classify(error) {
                        PaymentError::Unavailable(message) => {
                            return Err(PaymentError::Unavailable(message));
                        }
                        // No such route (a 404, or a plain-text body where Stripe
                        // answers JSON): this server pays drafts directly.
                        PaymentError::NotFound(_) | PaymentError::Unexpected(_) => {
                            tracing::info!(
                                invoice = id,
                                "finalize not available; paying drafts directly from now on"
                            );
                            self.finalize_unsupported.store(true, Ordering::Relaxed);
                        }
                        // Finalized meanwhile, say: the payment below tells.
                        other => tracing::warn!(invoice = id, error = %other, "finalize refused"),
                    }
                }
            }
            "draft" | "open" => {}
            other => {
                return Ok(ChargeOutcome::Closed {
                    status: other.to_owned(),
                });
            }
        }
        let paid = PayInvoice::new(id)
            .customize()
            .request_strategy(idempotent(attempt_key)?)
            .send(&self.client)
            .await;
        match paid {
            Ok(invoice) if invoice.status == Some(InvoiceStatus::Paid) => Ok(ChargeOutcome::Paid),
            // Some servers answer a failed charge with the invoice still open.
            Ok(_) => Ok(ChargeOutcome::Declined {
                code: "card_declined".into(),
                message: "the charge was declined".into(),
            }),
            Err(error) => match classify(error) {
                PaymentError::Declined { code, message } => {
                    Ok(ChargeOutcome::Declined { code, message })
                }
                // "Already paid": paid by a twin of this call, or outside.
                PaymentError::Refused(refusal) => match self.get_invoice(id).await?.status.as_str()
                {
                    "paid" => Ok(ChargeOutcome::Paid),
                    _ => Err(PaymentError::Refused(refusal)),
                },
                other => Err(other),
            },
        }
    }

    async fn ensure_subscription(
        &self,
        customer: &str,
        plan: &RecurringPlan,
        attempt: Attempt,
    ) -> Result<SubscriptionRef, PaymentError> {
        let plan_id = self.ensure_plan(plan).await?;
        let ours: Vec<Subscription> = if attempt == Attempt::First {
            Vec::new()
        } else {
            self.subscriptions_to(customer, &plan_id).await?
        };
        if let Some(live) = ours.iter().find(|s| is_live(s)) {
            return Ok(subscription_ref(live));
        }
        if let Some(unpaid) = ours
            .iter()
            .find(|s| s.status == SubscriptionStatus::Incomplete)
        {
            return Err(self.give_up_on(unpaid).await);
        }
        // Earlier subscriptions ended (declined, then canceled); this one needs its own key.
        let earlier = ours.len();
        let item = CreateSubscriptionItems {
            plan: Some(plan_id.clone()),
            ..Default::default()
        };
        let subscription = CreateSubscription::new()
            .customer(customer)
            .items(vec![item])
            .customize()
            .request_strategy(idempotent(&format!(
                "subscription-{customer}-{plan_id}-{earlier}"
            ))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        if subscription.status == SubscriptionStatus::Incomplete {
            return Err(self.give_up_on(&subscription).await);
        }
        Ok(subscription_ref(&subscription))
    }

    async fn change_plan(
        &self,
        subscription: &str,
        plan: &RecurringPlan,
        prorate: bool,
    ) -> Result<SubscriptionRef, PaymentError> {
        let plan_id = self.ensure_plan(plan).await?;
        let current = stripe_billing::subscription::RetrieveSubscription::new(subscription)
            .send(&self.client)
            .await
            .map_err(classify)?;
        if subscription_plan(&current).as_deref() == Some(plan_id.as_str()) {
            return Ok(subscription_ref(&current));
        }
        let item_id = current
            .items
            .data
            .first()
            .map(|item| item.id.to_string())
            .ok_or_else(|| {
                PaymentError::Unexpected(format!("subscription {subscription} has no item"))
            })?;
        let item = UpdateSubscriptionItems {
            id: Some(item_id),
            plan: Some(plan_id.clone()),
            ..Default::default()
        };
        let proration = if prorate {
            UpdateSubscriptionProrationBehavior::CreateProrations
        } else {
            UpdateSubscriptionProrationBehavior::None
        };
        let updated = UpdateSubscription::new(subscription)
            .items(vec![item])
            .proration_behavior(proration)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(subscription_ref(&updated))
    }

    async fn cancel_subscription(&self, subscription: &str) -> Result<(), PaymentError> {
        let current = stripe_billing::subscription::RetrieveSubscription::new(subscription)
            .send(&self.client)
            .await
            .map_err(classify)?;
        if matches!(
            current.status,
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
        ) {
            return Ok(());
        }
        CancelSubscription::new(subscription)
            .send(&self.client)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn delete_customer(&self, customer: &str) -> Result<(), PaymentError> {
        match DeleteCustomer::new(customer).send(&self.client).await {
            Ok(_) => Ok(()),
            Err(error) => match classify(error) {
                PaymentError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn ping(&self) -> Result<(), PaymentError> {
        ListCustomer::new()
            .limit(1)
            .send(&self.client)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

fn provider_invoice(
    invoice: &Invoice,
    lines: &[InvoiceLineItem],
) -> Result<ProviderInvoice, PaymentError> {
    let id = invoice
        .id
        .as_ref()
        .ok_or_else(|| PaymentError::Unexpected("an invoice without an id".into()))?
        .to_string();
    let lines = lines
        .iter()
        .map(|line| ProviderLine {
            amount: line.amount,
            description: line.description.clone().unwrap_or_default(),
            origin: match line.metadata.get(LINE_KEY) {
                Some(reference) => LineOrigin::Ours(reference.clone()),
                None if line
                    .parent
                    .as_ref()
                    .is_some_and(|p| p.subscription_item_details.is_some()) =>
                {
                    LineOrigin::Subscription
                }
                None => LineOrigin::Other,
            },
        })
        .collect();
    Ok(ProviderInvoice {
        id,
        reference: invoice
            .metadata
            .as_ref()
            .and_then(|m| m.get(INVOICE_KEY))
            .cloned(),
        customer: invoice.customer.as_ref().map(expandable_id),
        status: invoice
            .status
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "draft".into()),
        total: invoice.total,
        attempt_count: invoice.attempt_count,
        lines,
    })
}

fn idempotent(key: &str) -> Result<RequestStrategy, PaymentError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|error| PaymentError::Unexpected(error.to_string()))
}

fn expandable_id<T: stripe_types::Object>(expandable: &Expandable<T>) -> String
where
    T::Id: ToString,
{
    expandable.id().to_string()
}

fn subscription_plan(subscription: &Subscription) -> Option<String> {
    let item = subscription.items.data.first()?;
    Some(item.plan.id.to_string())
}

/// Subscriptions that stand: paid up, or in dunning but not ended.
fn is_live(subscription: &Subscription) -> bool {
    matches!(
        subscription.status,
        SubscriptionStatus::Active
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Unpaid
    )
}

fn subscription_ref(subscription: &Subscription) -> SubscriptionRef {
    SubscriptionRef {
        id: subscription.id.to_string(),
        plan_id: subscription_plan(subscription).unwrap_or_default(),
        status: subscription.status.to_string(),
    }
}

/// A create with our own id lost a race with a twin: Stripe answers 400
/// `resource_already_exists`, Stripe-compatible servers may answer 409.
fn is_already_exists(error: &StripeError) -> bool {
    match error {
        StripeError::Stripe(_, 409) => true,
        StripeError::Stripe(api, 400) => {
            api.code
                .as_ref()
                .is_some_and(|code| code.to_string() == "resource_already_exists")
                || api
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("already exists"))
        }
        _ => false,
    }
}

/// Sorts an async-stripe error into what the caller can act on.
fn classify(error: StripeError) -> PaymentError {
    match error {
        StripeError::Stripe(api, status) => {
            let message = api.message.clone().unwrap_or_default();
            let code = api.code.as_ref().map(|code| code.to_string());
            if let Some(decline) = api.decline_code.clone().or_else(|| {
                code.clone()
                    .filter(|c| c == "card_declined" || c == "expired_card" || c == "incorrect_cvc")
            }) {
                return PaymentError::Declined {
                    code: decline,
                    message,
                };
            }
            match status {
                404 => PaymentError::NotFound(message),
                429 | 500..=599 => PaymentError::Unavailable(format!("{status}: {message}")),
                _ => PaymentError::Refused(format!("{status}: {message}")),
            }
        }
        StripeError::ClientError(message) => PaymentError::Unavailable(message),
        StripeError::Timeout => PaymentError::Unavailable("timeout".into()),
        other => PaymentError::Unexpected(other.to_string()),
    }
}
