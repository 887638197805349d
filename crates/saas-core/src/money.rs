//! Money is an integer count of the currency's minor unit (cents for USD). There are no
//! floats anywhere on the path from usage to invoice.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code, stored lower-case as Stripe spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Accepts three ASCII letters in either case.
    pub fn new(code: &str) -> Option<Self> {
        (code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| Self(code.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount in minor units of a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Integer minor units (for example cents).
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// Adds two amounts of the same currency; `None` on a currency mismatch or overflow.
    pub fn checked_add(&self, other: &Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money::new(
            self.amount.checked_add(other.amount)?,
            self.currency.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_normalised_and_validated() {
        assert_eq!(Currency::new("USD").unwrap().as_str(), "usd");
        assert!(Currency::new("US").is_none());
        assert!(Currency::new("us1").is_none());
    }

    #[test]
    fn adding_refuses_mixed_currencies_and_overflow() {
        let usd = Currency::new("usd").unwrap();
        let eur = Currency::new("eur").unwrap();
        let a = Money::new(150, usd.clone());
        assert_eq!(
            a.checked_add(&Money::new(50, usd.clone())).unwrap().amount,
            200
        );
        assert!(a.checked_add(&Money::new(1, eur)).is_none());
        assert!(
            Money::new(i64::MAX, usd.clone())
                .checked_add(&Money::new(1, usd))
                .is_none()
        );
    }
}
