//! Self-service onboarding: a signup becomes a paying, provisioned tenant with no human
//! in between.
//!
//! - [`request`]: what a signup must look like (pure validation).
//! - [`store`]: signups and their steps in Postgres.
//! - [`sealed`]: secrets kept only under a key the store never holds.
//! - [`secrets`]: the first API key and the replayed token, sealed that way.
//! - [`workflow`]: takes a signup through payment and provisioning. Every step is
//!   idempotent and recorded, so a worker killed at any point resumes and finishes
//!   exactly once; [`job`] is the job that runs it.

pub mod accept;
pub mod job;
pub mod request;
pub mod sealed;
pub mod secrets;
pub mod store;
pub mod workflow;

pub use job::OnboardingJob;
pub use workflow::OnboardingWorkflow;
