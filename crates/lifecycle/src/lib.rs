//! The tenant lifecycle.
//!
//! [`state_machine`] is plain code with no I/O: the one table of allowed transitions.
//! Persisting a transition (conditional update, audit entry, follow-up job) builds on it.

pub mod state_machine;

pub use state_machine::{InvalidTransition, TRANSITIONS, check_transition};
