//! Where an invoice stands, and the one table of the moves it may make. Every update of
//! `invoices.status` asks [`InvoiceStatus::sources`] which states it may move from, so
//! an invoice only ever moves forward, whatever order events arrive in.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Made, not yet composed at Stripe.
    Draft,
    /// Finalized and awaiting payment (or open for collection elsewhere).
    Open,
    Paid,
    /// Written off; may still be paid later, as at Stripe.
    Uncollectible,
    /// Canceled for good.
    Void,
}

use InvoiceStatus::*;

/// Every allowed `(from, to)` pair:
///
/// - a draft opens when it is finalized at Stripe, or is paid as it is made (a total of
///   zero);
/// - an open invoice is paid, voided or written off;
/// - a written-off invoice may still be paid, or voided;
/// - `paid` and `void` are final.
pub const TRANSITIONS: &[(InvoiceStatus, InvoiceStatus)] = &[
    (Draft, Open),
    (Draft, Paid),
    (Open, Paid),
    (Open, Void),
    (Open, Uncollectible),
    (Uncollectible, Paid),
    (Uncollectible, Void),
];

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 5] = [Draft, Open, Paid, Uncollectible, Void];

    pub fn as_str(self) -> &'static str {
        match self {
            Draft => "draft",
            Open => "open",
            Paid => "paid",
            Uncollectible => "uncollectible",
            Void => "void",
        }
    }

    pub fn parse(text: &str) -> Option<InvoiceStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn may_move_to(self, to: InvoiceStatus) -> bool {
        TRANSITIONS.contains(&(self, to))
    }

    /// The states an invoice may move to `self` from, as SQL text values.
    pub fn sources(self) -> Vec<&'static str> {
        TRANSITIONS
            .iter()
            .filter(|(_, to)| *to == self)
            .map(|(from, _)| from.as_str())
            .collect()
    }

    pub fn is_final(self) -> bool {
        !Self::ALL.into_iter().any(|to| self.may_move_to(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_states_is_decided_by_the_table() {
        let expected_moves = [
            (Draft, Open, true),
            (Draft, Paid, true),
            (Draft, Uncollectible, false),
            (Draft, Void, false),
            (Open, Draft, false),
            (Open, Paid, true),
            (Open, Uncollectible, true),
            (Open, Void, true),
            (Paid, Draft, false),
            (Paid, Open, false),
            (Paid, Uncollectible, false),
            (Paid, Void, false),
            (Uncollectible, Draft, false),
            (Uncollectible, Open, false),
            (Uncollectible, Paid, true),
            (Uncollectible, Void, true),
            (Void, Draft, false),
            (Void, Open, false),
            (Void, Paid, false),
            (Void, Uncollectible, false),
        ];
        let mut seen = 0;
        for from in InvoiceStatus::ALL {
            for to in InvoiceStatus::ALL {
                if from == to {
                    assert!(!from.may_move_to(to), "{from:?} moves to itself");
                    continue;
                }
                let (_, _, allowed) = expected_moves
                    .iter()
                    .find(|(f, t, _)| *f == from && *t == to)
                    .expect("every pair is listed");
                assert_eq!(from.may_move_to(to), *allowed, "{from:?} -> {to:?}");
                seen += 1;
            }
        }
        assert_eq!(seen, expected_moves.len());
    }

    #[test]
    fn paid_and_void_are_final_and_everything_else_can_end() {
        let finals: Vec<_> = InvoiceStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, [Paid, Void]);
        for status in InvoiceStatus::ALL {
            assert_eq!(InvoiceStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(Paid.sources(), ["draft", "open", "uncollectible"]);
        assert_eq!(Void.sources(), ["open", "uncollectible"]);
    }
}
