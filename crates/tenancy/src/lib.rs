//! The tenant store: plans, tenants, API keys, sessions, the audit log and the payment
//! lock.
//!
//! Every function that touches tenant-owned rows takes the `TenantId` explicitly and runs
//! inside a [`Db::tenant_tx`] transaction (from the `db` crate, re-exported here).

pub mod api_keys;
pub mod audit;
pub mod email_verification;
pub mod payment_lock;
pub mod plans;
pub mod probes;
pub mod rate_limits;
pub mod sessions;
pub mod tenants;
pub mod tokens;

pub use db::{Db, DbTx, MIGRATOR, StoreError, is_lock_timeout};
