//! Win-back campaigns.
//!
//! A campaign starts in the transaction that suspends a tenant (or completes its move
//! from a paid plan to the free one), with a job that plans its steps. Each step is a job
//! due at the campaign's start plus the step's offset; it writes one message to the
//! notification outbox (the later ones with an offer) and plans the next. Reactivation
//! ends the campaign as `won`, erasure as `ended`; a step of a campaign that is no
//! longer running does nothing.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jobs::{JobContext, JobError, JobHandler, JobKind, JobOptions};
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::{Db, StoreError};
use uuid::Uuid;

/// When each outreach step goes out, counted from the campaign's start, and from which
/// step on an offer is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinbackSchedule {
    pub steps: Vec<Duration>,
    /// Index of the first step that carries the offer.
    pub offer_from_step: usize,
    /// The offer, in percent off the next invoice.
    pub offer_percent_off: u8,
}

impl WinbackSchedule {
    /// Parses offsets like `"3d,14d,30d"` (units `d`, `h`, `m`, `s`), strictly increasing.
    pub fn parse_steps(text: &str) -> Result<Vec<Duration>, String> {
        saas_core::schedule::parse_offsets(text)
    }
}

/// One step of a campaign.
#[derive(Debug, Serialize, Deserialize)]
pub struct WinbackStepJob {
    campaign_id: Uuid,
    tenant_id: TenantId,
    step: usize,
    /// False for the job `start` writes, which knows no schedule: it only plans step 0
    /// at its time.
    planned: bool,
}

impl JobKind for WinbackStepJob {
    const KIND: &'static str = "lifecycle.winback_step";

    fn concurrency_key(&self) -> Option<String> {
        jobs::tenant_key(self.tenant_id)
    }
}

/// Starts a campaign for `tenant` unless one is running, in the caller's transaction.
pub async fn start(
    conn: &mut PgConnection,
    tenant: TenantId,
    reason: &str,
) -> Result<(), StoreError> {
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO winback_campaigns (id, tenant_id, reason) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) WHERE status = 'running' DO NOTHING",
    )
    .bind(id)
    .bind(tenant.as_uuid())
    .bind(reason)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        enqueue_step(conn, id, tenant, 0, None).await?;
    }
    Ok(())
}

/// Ends the tenant's running campaign, if any, as `status` (`won` or `ended`).
pub async fn end(
    conn: &mut PgConnection,
    tenant: TenantId,
    status: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE winback_campaigns SET status = $2, ended_at = now() \
         WHERE tenant_id = $1 AND status = 'running'",
    )
    .bind(tenant.as_uuid())
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// The job of `step`, due at `run_at`; without a time, the job that plans step 0.
async fn enqueue_step(
    conn: &mut PgConnection,
    campaign: Uuid,
    tenant: TenantId,
    step: usize,
    run_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let planned = run_at.is_some();
    let job = WinbackStepJob {
        campaign_id: campaign,
        tenant_id: tenant,
        step,
        planned,
    };
    let dedup = if planned {
        format!("{campaign}:{step}")
    } else {
        format!("{campaign}:plan")
    };
    let mut options = JobOptions::dedup_key(dedup);
    if let Some(at) = run_at {
        options = options.run_at(at);
    }
    job.enqueue(conn, options).await?;
    Ok(())
}

pub struct WinbackWorkflow {
    db: Db,
    schedule: WinbackSchedule,
}

impl WinbackWorkflow {
    pub fn new(db: Db, schedule: WinbackSchedule) -> Self {
        Self { db, schedule }
    }
}

#[derive(sqlx::FromRow)]
struct Campaign {
    status: String,
    steps_sent: i32,
    started_at: DateTime<Utc>,
    offer_code: Option<String>,
}

#[async_trait]
impl JobHandler<WinbackStepJob> for WinbackWorkflow {
    async fn run(&self, payload: WinbackStepJob, _: JobContext) -> Result<(), JobError> {
        let mut tx = self.db.tenant_tx(payload.tenant_id).await?;
        let campaign: Campaign = sqlx::query_as(
            "SELECT status, steps_sent, started_at, offer_code FROM winback_campaigns \
             WHERE id = $1 FOR UPDATE",
        )
        .bind(payload.campaign_id)
        .fetch_one(&mut *tx)
        .await?;
        let step = payload.step;
        if campaign.status != "running" || step >= self.schedule.steps.len() {
            return Ok(());
        }
        if !payload.planned {
            let due = campaign.started_at + to_delta(self.schedule.steps[0]);
            enqueue_step(
                &mut tx,
                payload.campaign_id,
                payload.tenant_id,
                0,
                Some(due),
            )
            .await?;
            return Ok(tx.commit().await?);
        }
        if usize::try_from(campaign.steps_sent).unwrap_or(0) > step {
            return Ok(()); // sent by an earlier run
        }
        let recipient = tenancy::tenants::get(&mut tx, payload.tenant_id)
            .await?
            .email;
        let offer = (step >= self.schedule.offer_from_step).then(|| {
            campaign.offer_code.clone().unwrap_or_else(|| {
                format!(
                    "BACK{}-{}",
                    self.schedule.offer_percent_off,
                    &payload.campaign_id.simple().to_string()[..8]
                )
            })
        });
        if let Some(recipient) = recipient {
            let mut body = String::from(
                "Your account is paused. Everything you stored is kept; reactivate any time from \
                 your dashboard or with POST /v1/tenant/reactivation.",
            );
            if let Some(code) = &offer {
                body.push_str(&format!(
                    "\n\nCome back now and take {}% off your next invoice with code {code}.",
                    self.schedule.offer_percent_off
                ));
            }
            outbox::enqueue(
                &mut tx,
                &outbox::NewMessage {
                    tenant: payload.tenant_id,
                    kind: outbox::Kind::Winback,
                    recipient: &recipient,
                    subject: &format!(
                        "We would like you back (message {} of {})",
                        step + 1,
                        self.schedule.steps.len()
                    ),
                    body: &body,
                    dedup_key: &format!("winback-{}-{step}", payload.campaign_id),
                },
            )
            .await?;
        }
        let last = step + 1 == self.schedule.steps.len();
        sqlx::query(
            "UPDATE winback_campaigns SET steps_sent = $2, offer_code = coalesce(offer_code, $3), \
                    status = CASE WHEN $4 THEN 'exhausted' ELSE status END, \
                    ended_at = CASE WHEN $4 THEN now() END \
             WHERE id = $1",
        )
        .bind(payload.campaign_id)
        .bind(i32::try_from(step + 1).unwrap_or(i32::MAX))
        .bind(&offer)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        if !last {
            let next = campaign.started_at + to_delta(self.schedule.steps[step + 1]);
            enqueue_step(
                &mut tx,
                payload.campaign_id,
                payload.tenant_id,
                step + 1,
                Some(next),
            )
            .await?;
        }
        tx.commit().await?;
        metrics::counter!("winback_messages_total", "offer" => offer.is_some().to_string())
            .increment(1);
        tracing::info!(tenant = %payload.tenant_id, campaign = %payload.campaign_id, step, "win-back message queued");
        Ok(())
    }
}

fn to_delta(offset: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(offset).unwrap_or(chrono::TimeDelta::MAX)
}

/// One campaign, as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CampaignView {
    pub id: Uuid,
    #[schema(value_type = String)]
    pub tenant_id: Uuid,
    pub reason: String,
    pub status: String,
    pub steps_sent: i32,
    pub offer_code: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// Campaigns, newest first, optionally by status; synthetic tenants left out.
pub async fn list(
    conn: &mut PgConnection,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<CampaignView>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.tenant_id, c.reason, c.status, c.steps_sent, c.offer_code, c.started_at, \
                c.ended_at \
         FROM winback_campaigns c \
         WHERE NOT tenant_is_synthetic(c.tenant_id) AND ($1::text IS NULL OR c.status = $1) \
         ORDER BY c.started_at DESC LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_in_days_down_to_seconds() {
        assert_eq!(
            WinbackSchedule::parse_steps("3d, 14d,30d").unwrap(),
            [3, 14, 30].map(|d| Duration::from_secs(d * 86_400))
        );
        assert_eq!(
            WinbackSchedule::parse_steps("1s,2s,90m").unwrap(),
            [1, 2, 5400].map(Duration::from_secs)
        );
        for bad in [
            "",
            "3",
            "d",
            "3w",
            "14d,3d",
            "3d,3d",
            "-1d",
            "99999999999999999d",
        ] {
            assert!(WinbackSchedule::parse_steps(bad).is_err(), "{bad:?}");
        }
    }
}
