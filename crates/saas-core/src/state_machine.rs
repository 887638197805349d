//! Which tenant state changes are allowed. Everything that moves a tenant asks
//! [`check_transition`]; nothing else decides. The answer to a yes is a [`StateMove`],
//! which only this check makes, and the tenant store moves a tenant's state only when
//! handed one: a move the table does not allow cannot be written.

use crate::TenantState::{self, *};

/// Every allowed `(from, to)` pair. `Deleted` appears only on the right: it is final.
///
/// - Provisioning ends `Active` once payment is confirmed, or `Deleted` if it never is.
/// - Plan changes run in `Upgrading` / `Downgrading` and end back in `Active`; a failed
///   change also ends `Active`, on the old plan.
/// - Dunning or an operator suspends; paying or an operator reactivates.
/// - Erasure is possible from every state but the final one.
pub const TRANSITIONS: &[(TenantState, TenantState)] = &[
    (Provisioning, Active),
    (Provisioning, Deleted),
    (Active, Upgrading),
    (Active, Downgrading),
    (Active, Suspended),
    (Active, Deleted),
    (Upgrading, Active),
    (Upgrading, Suspended),
    (Upgrading, Deleted),
    (Downgrading, Active),
    (Downgrading, Suspended),
    (Downgrading, Deleted),
    (Suspended, Active),
    (Suspended, Deleted),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a tenant cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: TenantState,
    pub to: TenantState,
}

/// A change of state the table allows, from [`check_transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMove {
    from: TenantState,
    to: TenantState,
}

impl StateMove {
    pub fn from(&self) -> TenantState {
        self.from
    }

    pub fn to(&self) -> TenantState {
        self.to
    }
}

pub fn check_transition(
    from: TenantState,
    to: TenantState,
) -> Result<StateMove, InvalidTransition> {
    if TRANSITIONS.contains(&(from, to)) {
        Ok(StateMove { from, to })
    } else {
        Err(InvalidTransition { from, to })
    }
}

/// Checks the table's own rules: no state moves to itself, none is listed twice,
/// `deleted` is final and every other state can get back to `active`.
pub fn check_table() -> Result<(), String> {
    for (i, pair) in TRANSITIONS.iter().enumerate() {
        if pair.0 == pair.1 {
            return Err(format!("{} moves to itself", pair.0));
        }
        if TRANSITIONS[i + 1..].contains(pair) {
            return Err(format!("{} -> {} listed twice", pair.0, pair.1));
        }
        if pair.0 == Deleted {
            return Err("deleted is not final".into());
        }
    }
    for state in TenantState::ALL {
        if state != Deleted && state != Active && check_transition(state, Active).is_err() {
            return Err(format!("{state} cannot get back to active"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected answer for every ordered pair of states, written out independently
    /// of the table so that a change to either shows up here.
    fn expected(from: TenantState, to: TenantState) -> bool {
        match (from, to) {
            (Deleted, _) => false,
            (_, Deleted) => true,
            (Provisioning, Active) => true,
            (Active, Upgrading | Downgrading | Suspended) => true,
            (Upgrading | Downgrading, Active | Suspended) => true,
            (Suspended, Active) => true,
            _ => false,
        }
    }

    #[test]
    fn every_pair_of_states_is_decided_by_the_table() {
        for from in TenantState::ALL {
            for to in TenantState::ALL {
                assert_eq!(
                    check_transition(from, to).is_ok(),
                    expected(from, to),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn deleted_is_final_and_no_state_moves_to_itself() {
        for state in TenantState::ALL {
            assert!(check_transition(Deleted, state).is_err());
            assert!(check_transition(state, state).is_err());
        }
    }

    #[test]
    fn the_table_passes_its_own_check() {
        assert_eq!(check_table(), Ok(()));
    }

    #[test]
    fn the_table_has_no_duplicates() {
        for (i, pair) in TRANSITIONS.iter().enumerate() {
            assert!(
                !TRANSITIONS[i + 1..].contains(pair),
                "{pair:?} listed twice"
            );
        }
    }

    #[test]
    fn every_live_state_can_reach_active_or_is_active() {
        for state in TenantState::ALL
            .into_iter()
            .filter(|s| *s != Deleted && *s != Active)
        {
            assert!(check_transition(state, Active).is_ok(), "{state} is stuck");
        }
    }
}
