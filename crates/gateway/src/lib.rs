//! The HTTP gateway: the only crate that speaks HTTP. It authenticates callers, validates
//! input, maps domain errors to the public error shape, and hands the work to the domain
//! crates.

pub mod auth;
pub mod client_address;
pub mod client_limits;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod key_cache;
pub mod limits;
pub mod metrics;
pub mod readiness;
pub mod request_context;
mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod workers;

pub use config::Config;
pub use startup::{Application, migrate, openapi_document};
