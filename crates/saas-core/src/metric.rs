//! The usage metrics the platform meters.

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
pub enum Metric {
    Queries,
    Tokens,
    Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?} (expected one of queries, tokens, bytes)")]
pub struct UnknownMetric(pub String);

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Queries, Metric::Tokens, Metric::Bytes];

    pub const fn as_str(self) -> &'static str {
        match self {
            Metric::Queries => "queries",
            Metric::Tokens => "tokens",
            Metric::Bytes => "bytes",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for metric in Metric::ALL {
            assert_eq!(metric.as_str().parse::<Metric>().unwrap(), metric);
        }
        assert!("Queries".parse::<Metric>().is_err());
    }
}
