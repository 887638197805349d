//! [`PaymentProvider`] on Stripe, through async-stripe.
//!
//! Stripe is the payment rail, not the biller: no Stripe subscriptions, prices or
//! renewal invoices. Each of our invoices becomes one Stripe invoice that we compose
//! (https://docs.stripe.com/invoicing/integration): a draft with `auto_advance=false` and
//! `pending_invoice_items_behavior=exclude`, our lines attached to it by id
//! (`invoice=in_...` on each invoice item), finalized, then paid when we say so. Stripe
//! therefore never creates, finalizes, charges or retries an invoice on its own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use stripe::StripeRequest;
use stripe::{Client, ClientBuilder};
use stripe_billing::invoice::{
    CreateInvoice, CreateInvoicePendingInvoiceItemsBehavior, FinalizeInvoiceInvoice, ListInvoice,
    PayInvoice, RetrieveInvoice, VoidInvoiceInvoice,
};
use stripe_billing::invoice_item::CreateInvoiceItem;
use stripe_billing::invoice_line_item::ListInvoiceInvoiceLineItem;
use stripe_billing::{Invoice, InvoiceCollectionMethod, InvoiceStatus};
use stripe_core::customer::{
    CreateCustomer, DeleteCustomer, ListCustomer, RetrieveCustomer, RetrieveCustomerReturned,
    UpdateCustomer, UpdateCustomerInvoiceSettings,
};
use stripe_payment::payment_method::AttachPaymentMethod;

use crate::provider::{
    Attempt, ChargeLine, ChargeOutcome, CustomerDetails, InvoiceDraft, LineOrigin, PaymentError,
    PaymentProvider, ProviderInvoice,
};

mod convert;

use convert::{classify, currency, expandable_id, idempotent, invoice_id, provider_invoice};

/// Metadata key holding our reference on every customer we create.
const REFERENCE_KEY: &str = "saas_reference";
/// Metadata key holding our invoice id on every provider invoice we create.
const INVOICE_KEY: &str = "saas_invoice";
/// Metadata key holding our line reference on every invoice item we create.
const LINE_KEY: &str = "saas_line";

pub struct StripeProvider {
    client: Client,
}

impl StripeProvider {
    /// A client whose every attempt gives up after `timeout`: a call that timed out has
    /// an unknown outcome, and every caller looks up by our ids before trying again.
    pub fn new(secret_key: &str, api_base: &str, timeout: Duration) -> Result<Self, PaymentError> {
        let client = ClientBuilder::new(secret_key)
            .url(api_base)
            .timeout(timeout)
            .build()
            .map_err(|error| PaymentError::Unexpected(error.to_string()))?;
        Ok(Self { client })
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

    /// A draft for `draft` that takes none of the customer's pending items and that
    /// Stripe never advances (finalizes, charges, retries) on its own.
    async fn create_draft(
        &self,
        customer: &str,
        draft: &InvoiceDraft,
    ) -> Result<Invoice, PaymentError> {
        let metadata = HashMap::from([(INVOICE_KEY.to_owned(), draft.reference.clone())]);
        CreateInvoice::new()
            .customer(customer)
            .currency(currency(&draft.currency)?)
            .collection_method(InvoiceCollectionMethod::ChargeAutomatically)
            .auto_advance(false)
            .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Exclude)
            .description(draft.description.as_str())
            .metadata(metadata)
            .customize()
            .request_strategy(idempotent(&format!("invoice-{}", draft.reference))?)
            .send(&self.client)
            .await
            .map_err(classify)
    }

    /// One of our lines, attached to the draft invoice `invoice` by id.
    async fn add_line(
        &self,
        customer: &str,
        invoice: &str,
        currency_code: &str,
        line: &ChargeLine,
    ) -> Result<(), PaymentError> {
        let metadata = HashMap::from([(LINE_KEY.to_owned(), line.reference.clone())]);
        CreateInvoiceItem::new()
            .customer(customer)
            .invoice(invoice)
            .currency(currency(currency_code)?)
            .amount(line.amount)
            .description(line.description.as_str())
            .metadata(metadata)
            .customize()
            .request_strategy(idempotent(&format!("invoice-item-{}", line.reference))?)
            .send(&self.client)
            .await
            .map(|_| ())
            .map_err(classify)
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

    async fn has_default_payment_method(&self, customer: &str) -> Result<bool, PaymentError> {
        Ok(self.default_payment_method(customer).await?.is_some())
    }

    async fn push_invoice(
        &self,
        customer: &str,
        draft: &InvoiceDraft,
        attempt: Attempt,
    ) -> Result<ProviderInvoice, PaymentError> {
        let found = match attempt {
            Attempt::First => None,
            Attempt::Retry => self.find_invoice(customer, &draft.reference).await?,
        };
        let (id, present) = match found {
            // Finalized already: its lines are fixed, and the caller checks them.
            Some(invoice) if invoice.status != "draft" => return Ok(invoice),
            Some(invoice) => {
                let present: HashSet<String> = invoice
                    .lines
                    .iter()
                    .filter_map(|line| match &line.origin {
                        LineOrigin::Ours(reference) => Some(reference.clone()),
                        LineOrigin::Other => None,
                    })
                    .collect();
                (invoice.id, present)
            }
            None => {
                let created = self.create_draft(customer, draft).await?;
                (invoice_id(&created)?, HashSet::new())
            }
        };
        for line in draft
            .lines
            .iter()
            .filter(|l| !present.contains(&l.reference))
        {
            self.add_line(customer, &id, &draft.currency, line).await?;
        }
        let finalized = FinalizeInvoiceInvoice::new(id.as_str())
            .auto_advance(false)
            .send(&self.client)
            .await;
        match finalized {
            Ok(invoice) => self.complete(&invoice).await,
            // Finalized by a twin of this call meanwhile: what it made is what stands.
            Err(error) => match classify(error) {
                PaymentError::Refused(_) => self.get_invoice(&id).await,
                other => Err(other),
            },
        }
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
        let paid = PayInvoice::new(id)
            .customize()
            .request_strategy(idempotent(attempt_key)?)
            .send(&self.client)
            .await;
        match paid {
            Ok(invoice) if invoice.status == Some(InvoiceStatus::Paid) => Ok(ChargeOutcome::Paid),
            Ok(invoice) => Err(PaymentError::Unexpected(format!(
                "invoice {id} is {:?} after a payment that did not fail",
                invoice.status
            ))),
            Err(error) => match classify(error) {
                PaymentError::Declined { code, message } => Ok(ChargeOutcome::Declined {
                    retryable: crate::declines::is_retryable(&code),
                    code,
                    message,
                }),
                // Refused: paid already (by a twin of this call, or outside), closed, or
                // not chargeable (no payment method): the invoice tells which.
                PaymentError::Refused(refusal) => {
                    match self.get_invoice(id).await?.status.as_str() {
                        "paid" => Ok(ChargeOutcome::Paid),
                        status @ ("void" | "uncollectible") => Ok(ChargeOutcome::Closed {
                            status: status.to_owned(),
                        }),
                        _ => Err(PaymentError::Refused(refusal)),
                    }
                }
                other => Err(other),
            },
        }
    }

    async fn void_invoice(&self, id: &str) -> Result<(), PaymentError> {
        match VoidInvoiceInvoice::new(id).send(&self.client).await {
            Ok(_) => Ok(()),
            Err(error) => match classify(error) {
                PaymentError::Refused(refusal) => {
                    match self.get_invoice(id).await?.status.as_str() {
                        "void" => Ok(()),
                        _ => Err(PaymentError::Refused(refusal)),
                    }
                }
                other => Err(other),
            },
        }
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
