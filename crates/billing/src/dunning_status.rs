//! Where dunning stands on an invoice, stored as text in `invoices.dunning` and written
//! as the same words in the API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum DunningStatus {
    /// No charge has failed.
    None,
    /// A charge failed; another is scheduled.
    Retrying,
    /// Every retry failed.
    Exhausted,
    /// The card was declined in a way no retry mends.
    HardDecline,
}

impl DunningStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DunningStatus::None => "none",
            DunningStatus::Retrying => "retrying",
            DunningStatus::Exhausted => "exhausted",
            DunningStatus::HardDecline => "hard_decline",
        }
    }

    /// Whether dunning gave up on the invoice.
    pub fn gave_up(self) -> bool {
        matches!(self, DunningStatus::Exhausted | DunningStatus::HardDecline)
    }
}

impl std::fmt::Display for DunningStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_and_the_written_words_agree() {
        for status in [
            DunningStatus::None,
            DunningStatus::Retrying,
            DunningStatus::Exhausted,
            DunningStatus::HardDecline,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }
}
