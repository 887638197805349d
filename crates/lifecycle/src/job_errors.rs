//! Store failures inside a job are worth retrying: the database may be back next time.

use jobs::JobError;
use tenancy::StoreError;

pub(crate) fn retry(error: StoreError) -> JobError {
    JobError::Retry(error.to_string())
}

pub(crate) fn sql_retry(error: sqlx::Error) -> JobError {
    JobError::Retry(error.to_string())
}
