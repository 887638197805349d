//! The vocabulary every other crate speaks: prefixed ids, money, metrics, tenant states
//! and the clock. No I/O lives here.

pub mod clock;
pub mod ids;
pub mod metric;
pub mod money;
pub mod period;
pub mod schedule;
pub mod state_machine;
pub mod tenant_state;

pub use clock::{Clock, SystemClock};
pub use ids::{
    ApiKeyId, IdParseError, SignupId, TenantId, TransitionId, WebhookEndpointId, WebhookEventId,
};
pub use metric::{Metric, UnknownMetric};
pub use money::{Currency, Money};
pub use period::{BillingCycle, BillingPeriod, InvalidBillingCycle};
pub use state_machine::{InvalidTransition, StateMove, check_transition};
pub use tenant_state::{TenantState, UnknownTenantState};
