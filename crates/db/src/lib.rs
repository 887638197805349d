//! The Postgres underneath every domain crate.
//!
//! Every function that touches tenant-owned rows runs inside a [`Db::tenant_tx`]
//! transaction, which tells Postgres row-level security whose rows it may see. Code that
//! must cross tenants (authentication by key hash, workers, operator views) asks for a
//! [`Db::system_tx`] by name, so every such place is easy to find. The schema's
//! migrations are embedded here ([`MIGRATOR`]); no table belongs to this crate.

mod db;
mod error;
mod export;
pub mod leader;

pub use db::{Db, DbTx, MIGRATOR, is_lock_timeout};
pub use error::StoreError;
pub use export::export_json;
