//! TCP proxies on loopback in front of a real service (Postgres, ClickHouse, the Stripe
//! fake), to see how the service behaves when what it depends on fails in ways the real
//! thing will not fail on request: connections cut mid-way, a server that answers 5xx,
//! stalls, or acts on a request and loses the answer.
//!
//! Every proxy listens on 127.0.0.1 only and forwards to the target it was given.

mod dying_caller;
mod proxy;

pub use dying_caller::DyingCaller;
pub use proxy::{FaultProxy, Mode};
