//! Rate limits every replica shares, in Postgres: the generic cell rate algorithm (GCRA)
//! over one row per bucket. A limit of `n` per minute admits a burst of `n`, then one
//! more each `60/n` seconds, whichever replica is asked; the database's clock is the only
//! one that counts.

use std::num::NonZeroU32;
use std::time::Duration;

use sqlx::PgConnection;

use crate::StoreError;

/// Whether a request may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit; the next request of the bucket is admitted after this long.
    Refused {
        retry_after: Duration,
    },
}

/// One request's share of the minute, in whole microseconds (Postgres's resolution),
/// rounded down so that `n` of them never exceed the minute.
fn emission_us(per_minute: NonZeroU32) -> i64 {
    60_000_000 / i64::from(per_minute.get())
}

/// Tries to take one request from `bucket`'s allowance at most this often before
/// calling it refused (each try that is refused but finds room is a race lost to time).
const TRIES: usize = 3;

/// Takes one request from `bucket`'s allowance of `per_minute`, if there is one left.
pub async fn admit(
    conn: &mut PgConnection,
    bucket: &str,
    per_minute: NonZeroU32,
) -> Result<Admission, StoreError> {
    for _ in 0..TRIES {
        // clock_timestamp(), not now(): a statement that waited for another request's
        // row lock must judge by the time it got it, not the time it started.
        let admitted: Option<bool> = sqlx::query_scalar(
            "INSERT INTO rate_limits (bucket, tat) \
             VALUES ($1, clock_timestamp() + $2 * interval '1 microsecond') \
             ON CONFLICT (bucket) DO UPDATE \
                SET tat = greatest(rate_limits.tat, clock_timestamp()) \
                          + $2 * interval '1 microsecond' \
                WHERE greatest(rate_limits.tat, clock_timestamp()) \
                      + $2 * interval '1 microsecond' \
                      <= clock_timestamp() + interval '1 minute' \
             RETURNING true",
        )
        .bind(bucket)
        .bind(emission_us(per_minute))
        .fetch_optional(&mut *conn)
        .await?;
        if admitted.is_some() {
            return Ok(Admission::Admitted);
        }
        if let Some(retry_after) = wait(conn, bucket, per_minute).await? {
            return Ok(Admission::Refused { retry_after });
        }
        // Room came between the two statements: try to take it.
    }
    Ok(Admission::Refused {
        retry_after: Duration::from_secs(1),
    })
}

/// How long until `bucket` admits its next request, if it would refuse one now; takes
/// nothing from the allowance (for limits counting only failures).
pub async fn wait(
    conn: &mut PgConnection,
    bucket: &str,
    per_minute: NonZeroU32,
) -> Result<Option<Duration>, StoreError> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM tat + $2 * interval '1 microsecond' \
                                   - interval '1 minute' - clock_timestamp())::float8 \
         FROM rate_limits WHERE bucket = $1",
    )
    .bind(bucket)
    .bind(emission_us(per_minute))
    .fetch_optional(conn)
    .await?;
    Ok(seconds
        .filter(|seconds| *seconds > 0.0)
        .map(Duration::from_secs_f64))
}

/// Deletes the buckets that have their whole allowance back (their time has passed):
/// they say nothing a missing row would not. Rows deleted.
pub async fn forget_idle(conn: &mut PgConnection) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM rate_limits WHERE tat < now()")
        .execute(conn)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_shares_never_exceed_the_minute_and_n_plus_one_do() {
        for n in [1, 3, 7, 10, 13, 60, 1000, 7919] {
            let limit = NonZeroU32::new(n).unwrap();
            let share = emission_us(limit);
            assert!(share * i64::from(n) <= 60_000_000, "{n}");
            assert!(share * i64::from(n + 1) > 60_000_000, "{n}");
        }
    }
}
