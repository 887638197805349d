//! A tenant's data-subject rights (GDPR articles 15, 17 and 20): [`export`] gathers
//! everything held about one tenant into one document, and [`erasure`] removes it
//! everywhere once the tenant's deletion is taken.
//!
//! This crate owns no table. It sits above the domain crates and asks each owner for
//! its part (each owner knows which of its columns are personal, and which are secret),
//! so that a table added later is exported and erased where it is defined.

pub mod erasure;
pub mod export;

pub use erasure::ErasureWorkflow;
