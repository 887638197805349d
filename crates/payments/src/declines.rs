//! Stripe's decline codes (https://docs.stripe.com/declines/codes): which ones a later
//! retry cannot turn into a payment. Only this crate speaks Stripe's vocabulary; callers
//! get a yes or no.

/// Decline codes that retrying cannot turn into a payment (Stripe's "do not try again"
/// codes): the card is gone, or the bank said never.
const HARD_DECLINES: &[&str] = &[
    "do_not_honor_permanently",
    "do_not_try_again",
    "expired_card",
    "fraudulent",
    "incorrect_number",
    "invalid_account",
    "lost_card",
    "merchant_blacklist",
    "pickup_card",
    "restricted_card",
    "revocation_of_all_authorizations",
    "revocation_of_authorization",
    "security_violation",
    "stolen_card",
];

/// Whether a charge declined with `code` may succeed if tried again later.
pub fn is_retryable(code: &str) -> bool {
    !HARD_DECLINES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_stolen_and_fraudulent_cards_are_never_retried() {
        for code in [
            "stolen_card",
            "lost_card",
            "expired_card",
            "fraudulent",
            "do_not_try_again",
        ] {
            assert!(!is_retryable(code), "{code}");
        }
        for code in ["card_declined", "insufficient_funds", "generic_decline"] {
            assert!(is_retryable(code), "{code}");
        }
    }
}
