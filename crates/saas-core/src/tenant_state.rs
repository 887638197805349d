//! The states a tenant can be in. Which moves between them are allowed is the lifecycle
//! crate's business; this is only the vocabulary, shared by storage and the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    Provisioning,
    Active,
    Upgrading,
    Downgrading,
    Suspended,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tenant state {0:?}")]
pub struct UnknownTenantState(pub String);

impl TenantState {
    pub const ALL: [TenantState; 6] = [
        TenantState::Provisioning,
        TenantState::Active,
        TenantState::Upgrading,
        TenantState::Downgrading,
        TenantState::Suspended,
        TenantState::Deleted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TenantState::Provisioning => "provisioning",
            TenantState::Active => "active",
            TenantState::Upgrading => "upgrading",
            TenantState::Downgrading => "downgrading",
            TenantState::Suspended => "suspended",
            TenantState::Deleted => "deleted",
        }
    }

    /// Whether the tenant's API keeps serving metered calls in this state. Plan changes
    /// run with the API up (zero downtime); suspension and deletion stop metering.
    pub const fn serves_metered_calls(self) -> bool {
        matches!(
            self,
            TenantState::Active | TenantState::Upgrading | TenantState::Downgrading
        )
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantState {
    type Err = UnknownTenantState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownTenantState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for state in TenantState::ALL {
            assert_eq!(state.as_str().parse::<TenantState>().unwrap(), state);
        }
    }
}
