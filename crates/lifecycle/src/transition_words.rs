//! The words a transition is recorded with, one type each, stored as text in
//! `tenant_transitions` and written as the same snake_case words in the API.

use serde::{Deserialize, Serialize};

/// `as_str` and `Display` with the stored word of each variant.
macro_rules! words {
    ($type:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $word),+
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// What a transition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TransitionKind {
    PlanChange,
    Suspension,
    Reactivation,
    Erasure,
}

/// Where a transition stands. `Scheduled` is a downgrade waiting for the period's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TransitionStatus {
    Running,
    Scheduled,
    Completed,
    Failed,
    Canceled,
}

words!(TransitionKind {
    PlanChange => "plan_change",
    Suspension => "suspension",
    Reactivation => "reactivation",
    Erasure => "erasure",
});

words!(TransitionStatus {
    Running => "running",
    Scheduled => "scheduled",
    Completed => "completed",
    Failed => "failed",
    Canceled => "canceled",
});

words!(Effective {
    Now => "now",
    PeriodEnd => "period_end",
});

impl TransitionStatus {
    /// Whether nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TransitionStatus::Completed | TransitionStatus::Failed | TransitionStatus::Canceled
        )
    }
}

/// When a plan change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Effective {
    Now,
    PeriodEnd,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are part of the API and of the stored rows: they must not drift.
    #[test]
    fn each_word_is_written_as_before() {
        let words = |value: serde_json::Value| value.as_str().unwrap().to_owned();
        let kinds = [
            (TransitionKind::PlanChange, "plan_change"),
            (TransitionKind::Suspension, "suspension"),
            (TransitionKind::Reactivation, "reactivation"),
            (TransitionKind::Erasure, "erasure"),
        ];
        for (kind, word) in kinds {
            assert_eq!(words(serde_json::to_value(kind).unwrap()), word);
            assert_eq!(kind.as_str(), word);
        }
        let statuses = [
            (TransitionStatus::Running, "running"),
            (TransitionStatus::Scheduled, "scheduled"),
            (TransitionStatus::Completed, "completed"),
            (TransitionStatus::Failed, "failed"),
            (TransitionStatus::Canceled, "canceled"),
        ];
        for (status, word) in statuses {
            assert_eq!(words(serde_json::to_value(status).unwrap()), word);
            assert_eq!(status.as_str(), word);
        }
        assert_eq!(
            words(serde_json::to_value(Effective::PeriodEnd).unwrap()),
            "period_end"
        );
        assert_eq!(words(serde_json::to_value(Effective::Now).unwrap()), "now");
    }
}
