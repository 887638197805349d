use saas_core::{UnknownMetric, UnknownTenantState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique or check constraint refused the write; carries the constraint's name so
    /// callers can map it to a precise API error.
    #[error("conflict on {constraint}")]
    Conflict { constraint: String },
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Held by someone else for longer than the caller waits (a lease, say): try later.
    #[error("busy: {0}")]
    Busy(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(db)
                if db.code().is_some_and(|code| server_unavailable(&code)) =>
            {
                StoreError::Unavailable(error)
            }
            sqlx::Error::Database(db) if db.is_unique_violation() || db.is_check_violation() => {
                StoreError::Conflict {
                    constraint: db.constraint().unwrap_or_default().to_owned(),
                }
            }
            _ => StoreError::Database(error),
        }
    }
}

/// SQLSTATEs of a server that is restarting or going away, not of a bad request: the
/// same request succeeds once it is back (https://www.postgresql.org/docs/current/errcodes-appendix.html).
pub fn server_unavailable(sqlstate: &str) -> bool {
    matches!(
        sqlstate,
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03"
    ) || sqlstate.starts_with("08") // connection exceptions
}

impl From<UnknownTenantState> for StoreError {
    fn from(error: UnknownTenantState) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

impl From<UnknownMetric> for StoreError {
    fn from(error: UnknownMetric) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::server_unavailable;

    #[test]
    fn restarts_and_lost_connections_are_unavailability_not_bad_requests() {
        for code in [
            "57P01", "57P02", "57P03", "08000", "08003", "08006", "08P01",
        ] {
            assert!(server_unavailable(code), "{code}");
        }
        for code in ["23505", "40001", "42P01", "57014"] {
            assert!(!server_unavailable(code), "{code}");
        }
    }
}
