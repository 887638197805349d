//! The tenant store.
//!
//! Every function that touches tenant-owned rows takes the `TenantId` explicitly and runs
//! inside a [`Db::tenant_tx`] transaction, which also tells Postgres row-level security
//! whose rows it may see. Code that must cross tenants (authentication by key hash,
//! workers, operator views) asks for a [`Db::system_tx`] by name, so every such place is
//! easy to find.

pub mod api_keys;
pub mod audit;
mod db;
pub mod email_verification;
mod error;
pub mod payment_lock;
pub mod plans;
pub mod probes;
pub mod sessions;
pub mod tenants;
pub mod tokens;

pub use db::{Db, DbTx, MIGRATOR, is_lock_timeout};
pub use error::StoreError;
