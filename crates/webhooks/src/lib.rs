//! Signed outbound webhooks.
//!
//! - Tenants register endpoints ([`endpoints`]): a URL, the event types it subscribes
//!   to, and a signing secret shown once and rotatable with an overlap.
//! - The code that changes something calls [`emit`] in its own transaction: the event,
//!   its deliveries and their jobs commit with the change or not at all.
//! - Deliveries ([`delivery`]) are jobs of the durable queue, signed by the Standard
//!   Webhooks scheme ([`signing`]), sent only where the [`AddressPolicy`] allows
//!   ([`sender`]), retried over about three days, and logged per endpoint ([`log`]).

pub mod address;
pub mod delivery;
mod emit;
pub mod endpoints;
pub mod erasure;
pub mod events;
pub mod log;
mod mail;
pub mod sender;
pub mod signing;

pub use address::{AddressPolicy, Refused};
pub use delivery::{DeliverWebhook, Deliverer, default_schedule};
pub use emit::emit;
pub use events::{EVENT_TYPES, Event, EventData, is_known_type};
pub use sender::{Lookup, Sender, StaticLookup, SystemLookup, Timeouts};
