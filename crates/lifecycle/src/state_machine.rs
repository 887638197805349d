//! Which tenant state changes are allowed: the table lives with the states themselves
//! (`saas_core::state_machine`), so that the tenant store can demand its answer.

pub use saas_core::state_machine::{
    InvalidTransition, StateMove, TRANSITIONS, check_table, check_transition,
};
