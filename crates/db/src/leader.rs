//! One process at a time: an election by a Postgres session advisory lock, held on a
//! connection of its own.
//!
//! The lock lives as long as the session. A process that dies closes its socket and the
//! lock goes with it at once. One that hangs (stopped, frozen) stops its heartbeat; its
//! session is then idle past `idle_session_timeout`, Postgres ends it, and the lock goes
//! too. A process that comes back after losing its session finds out at its next
//! heartbeat and stops leading. For a short time two processes may both believe they
//! lead, so what the leader does must stay correct when done twice (unique keys see to
//! that); the election only saves duplicated work.

use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};
use tokio::sync::watch;

/// Settings of one election.
#[derive(Debug, Clone)]
pub struct Election {
    /// Names the office; every candidate of one office uses the same name.
    pub office: &'static str,
    /// How often the leader proves it is alive, and a follower asks again.
    pub heartbeat: Duration,
    /// How long a silent leader keeps the office: its session is ended by Postgres once
    /// idle for this long. At least three heartbeats.
    pub idle_limit: Duration,
}

impl Election {
    pub fn new(office: &'static str) -> Self {
        Self {
            office,
            heartbeat: Duration::from_secs(2),
            idle_limit: Duration::from_secs(10),
        }
    }

    /// Stands for the office until `stop` turns true. The returned receiver says
    /// whether this process leads now; the office is given up on stop.
    pub fn run(
        self,
        pool: &PgPool,
        mut stop: watch::Receiver<bool>,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let options = pool.connect_options();
        let (leading_tx, leading) = watch::channel(false);
        // Exported from the start, so an alert on it is defined before the first round.
        metrics::gauge!("leader", "office" => self.office).set(0.0);
        let task = tokio::spawn(async move {
            let mut session: Option<PgConnection> = None;
            let mut leads = false;
            loop {
                leads = self.stand(&options, &mut session, leads).await;
                // Told only on a change, so followers of the receiver wake only then.
                leading_tx.send_if_modified(|current| {
                    let changed = *current != leads;
                    if changed {
                        tracing::info!(office = self.office, leads, "leadership changed");
                        *current = leads;
                    }
                    changed
                });
                metrics::gauge!("leader", "office" => self.office).set(f64::from(u8::from(leads)));
                tokio::select! {
                    _ = tokio::time::sleep(self.heartbeat) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    leading_tx.send_replace(false);
                    if let Some(session) = session.take() {
                        // Closing the session gives the office up at once.
                        let _ = session.close().await;
                    }
                    return;
                }
            }
        });
        (leading, task)
    }

    /// One round: the leader's heartbeat on its session, or a follower's try for the
    /// lock (on a session it opens if it has none). Whether this process leads after it.
    async fn stand(
        &self,
        options: &sqlx::postgres::PgConnectOptions,
        session: &mut Option<PgConnection>,
        leads: bool,
    ) -> bool {
        if session.is_none() {
            match self.open(options).await {
                Ok(opened) => *session = Some(opened),
                Err(error) => {
                    tracing::warn!(office = self.office, %error, "could not open an election session");
                    return false;
                }
            }
        }
        let Some(conn) = session.as_mut() else {
            return false;
        };
        let held: Result<bool, sqlx::Error> = if leads {
            // The lock is the session's for as long as the session lives.
            sqlx::query_scalar("SELECT true")
                .fetch_one(&mut *conn)
                .await
        } else {
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('leader:' || $1, 0))")
                .bind(self.office)
                .fetch_one(&mut *conn)
                .await
        };
        match held {
            Ok(held) => held,
            Err(error) => {
                // The session is gone (ended for idling, say): so is the lock.
                tracing::warn!(office = self.office, %error, "election session lost");
                *session = None;
                false
            }
        }
    }

    async fn open(
        &self,
        options: &sqlx::postgres::PgConnectOptions,
    ) -> Result<PgConnection, sqlx::Error> {
        session(options, self.idle_limit).await
    }
}

/// A connection of its own that Postgres ends once it is idle for `idle_limit`, and the
/// session locks it holds with it.
async fn session(
    options: &sqlx::postgres::PgConnectOptions,
    idle_limit: Duration,
) -> Result<PgConnection, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    sqlx::query("SELECT set_config('idle_session_timeout', $1, false)")
        .bind(idle_limit.as_millis().max(1).to_string())
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Holds `name` exclusively, across every process on the database, for as long as the
/// returned session lives: waits up to `wait` for another holder (then `None`). The
/// session ends Postgres-side once idle for `idle_limit`, so a holder that freezes
/// mid-work lets go; keep the work shorter than that.
pub async fn exclusive(
    pool: &PgPool,
    name: &str,
    wait: Duration,
    idle_limit: Duration,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = session(&pool.connect_options(), idle_limit).await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(wait.as_millis().max(1).to_string())
        .execute(&mut conn)
        .await?;
    let locked = sqlx::query("SELECT pg_advisory_lock(hashtextextended('exclusive:' || $1, 0))")
        .bind(name)
        .execute(&mut conn)
        .await;
    match locked {
        Ok(_) => Ok(Some(conn)),
        // The wait ran out.
        Err(error) if crate::is_lock_timeout(&error) => Ok(None),
        Err(error) => Err(error),
    }
}
