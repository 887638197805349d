//! A suspended tenant coming back by itself (the way win-back messages point to): with a
//! new payment method when it gives one, its unpaid invoices are charged first, and only
//! then is it active again, with every byte it stored intact.

use lifecycle::{Change, Transition, TransitionError, TransitionRequest};
use payments::PaymentError;
use saas_core::TenantState;
use tenancy::{Db, StoreError};
use uuid::Uuid;

use super::{CollectError, Collector, Settlement};

/// What the tenant asks: the transition (a `Reactivate`), and a payment method to pay
/// with from now on, if any.
pub struct Reactivation {
    pub request: TransitionRequest,
    pub payment_method: Option<String>,
    /// Whether the caller may change the payment method (an API key may; a dashboard
    /// session may not).
    pub may_change_payment_method: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReactivationError {
    #[error("only a suspended tenant can be reactivated; this one is {0}")]
    NotSuspended(TenantState),
    #[error("this suspension can only be lifted by an operator")]
    OnlyByOperator,
    #[error("changing the payment method needs the API key itself")]
    KeyRequired,
    #[error("payment methods cannot be taken here")]
    BillingNotConfigured,
    #[error("{0}")]
    PaymentMethodRefused(PaymentError),
    #[error("the payment provider is unavailable: {0}")]
    ProviderUnavailable(PaymentError),
    #[error("invoice {invoice} could not be paid ({code}); use another payment method")]
    PaymentFailed { invoice: Uuid, code: String },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Collect(CollectError),
}

/// Reactivates the tenant of `ask.request` if its suspension allows it, after paying
/// what it owes. `collector` is `None` where no payment provider is configured.
pub async fn reactivate(
    db: &Db,
    collector: Option<&Collector>,
    ask: Reactivation,
) -> Result<Transition, ReactivationError> {
    debug_assert_eq!(ask.request.change, Change::Reactivate);
    let tenant = ask.request.tenant_id;
    // The state as stored: dunning suspends tenants from a job, and a tenant comes back
    // right after.
    let (current, allowed) = {
        let mut tx = db.tenant_tx(tenant).await?;
        let current = tenancy::tenants::get(&mut tx, tenant).await?;
        let allowed = lifecycle::transitions::tenant_may_reactivate(&mut tx, tenant).await?;
        tx.commit().await.map_err(StoreError::from)?;
        (current, allowed)
    };
    if current.state != TenantState::Suspended {
        return Err(ReactivationError::NotSuspended(current.state));
    }
    if !allowed {
        return Err(ReactivationError::OnlyByOperator);
    }
    if let Some(method) = &ask.payment_method {
        if !ask.may_change_payment_method {
            return Err(ReactivationError::KeyRequired);
        }
        let (Some(collector), Some(customer)) = (collector, &current.stripe_customer_id) else {
            return Err(ReactivationError::BillingNotConfigured);
        };
        collector
            .payments
            .ensure_default_payment_method(customer, method, payments::Attempt::First)
            .await
            .map_err(|error| match error {
                PaymentError::Unavailable(_) => ReactivationError::ProviderUnavailable(error),
                other => ReactivationError::PaymentMethodRefused(other),
            })?;
    }
    // Paying first where needed: every unpaid invoice is charged to the (new) default
    // payment method, and a decline keeps the tenant suspended.
    if let Some(collector) = collector {
        let settled = collector
            .settle(tenant)
            .await
            .map_err(|error| match error {
                CollectError::Payment(payment) if payment.is_retryable() => {
                    ReactivationError::ProviderUnavailable(payment)
                }
                other => ReactivationError::Collect(other),
            })?;
        if let Settlement::Declined { invoice, code } = settled {
            return Err(ReactivationError::PaymentFailed { invoice, code });
        }
    }
    Ok(lifecycle::transitions::begin(db, &ask.request).await?)
}
