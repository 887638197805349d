//! Limits per client address that every replica shares: they count in Postgres
//! (`tenancy::rate_limits`), so N replicas allow what one does, and they key on the
//! client as [`crate::client_address`] finds it, so clients behind a trusted proxy are
//! counted apart.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use tenancy::rate_limits::{self, Admission};

use crate::error::ApiError;
use crate::state::AppState;

/// What is limited per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    /// Signups, against card testing.
    Signups,
    /// Dashboard and operator sign-in attempts, against guessing.
    SignIns,
    /// Wrong operator tokens on the admin API, against guessing. Only failures count.
    OperatorTokenFailures,
}

impl ClientLimit {
    fn kind(self) -> &'static str {
        match self {
            ClientLimit::Signups => "signups",
            ClientLimit::SignIns => "sign_ins",
            ClientLimit::OperatorTokenFailures => "operator_token_failures",
        }
    }

    fn bucket(self, client: IpAddr) -> String {
        format!("{}:{client}", self.kind())
    }

    fn per_minute(self, state: &AppState) -> NonZeroU32 {
        match self {
            ClientLimit::Signups => state.config.signups.rate_per_minute,
            ClientLimit::SignIns | ClientLimit::OperatorTokenFailures => {
                state.config.dashboard.sign_ins_per_minute
            }
        }
    }
}

/// Takes one request of `limit` from `client`'s allowance: `Ok(None)` when admitted,
/// else how long until the next would be.
pub async fn admit(
    state: &AppState,
    limit: ClientLimit,
    client: IpAddr,
) -> Result<Option<Duration>, ApiError> {
    let mut conn = state.db.pool().acquire().await?;
    let admission =
        rate_limits::admit(&mut conn, &limit.bucket(client), limit.per_minute(state)).await?;
    Ok(match admission {
        Admission::Admitted => None,
        Admission::Refused { retry_after } => {
            metrics::counter!("client_rate_limited_total", "limit" => limit.kind()).increment(1);
            Some(retry_after)
        }
    })
}

/// How long `client` must wait before `limit` admits it again, taking nothing.
pub async fn refused_for(
    state: &AppState,
    limit: ClientLimit,
    client: IpAddr,
) -> Result<Option<Duration>, ApiError> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(rate_limits::wait(&mut conn, &limit.bucket(client), limit.per_minute(state)).await?)
}
