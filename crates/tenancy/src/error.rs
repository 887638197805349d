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
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
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
