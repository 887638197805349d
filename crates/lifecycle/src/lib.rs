//! The tenant lifecycle.
//!
//! [`state_machine`] is plain code with no I/O: the one table of allowed transitions.
//! [`transitions`] takes a transition safely under concurrency (conditional update,
//! audit entry and follow-up job in one transaction); [`plan_change`] is the job that
//! carries a plan change out and ends it, and [`plan_history`] tells billing which plan
//! was in effect when; [`deletions`] keeps the record of each erasure (which the
//! `privacy` crate carries out).

pub mod deletions;
pub mod plan_change;
pub mod plan_history;
pub mod state_machine;
pub mod transition_jobs;
pub mod transition_words;
pub mod transitions;
pub mod winback;

pub use plan_change::PlanChangeWorkflow;
pub use state_machine::{InvalidTransition, TRANSITIONS, check_transition};
pub use transitions::{Change, Transition, TransitionError, TransitionRequest};
pub use winback::{WinbackSchedule, WinbackWorkflow};
