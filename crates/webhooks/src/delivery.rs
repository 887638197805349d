//! Delivering an event to one endpoint: a job per delivery, run by any replica's
//! webhook worker. Each attempt is signed afresh (the timestamp is the attempt's), so
//! receivers can refuse stale messages; the `webhook-id` is the event's, so a receiver
//! drops repeats by it. Attempts follow a schedule spanning about three days; a delivery
//! that exhausts it with nothing delivered to its endpoint meanwhile turns the endpoint
//! off and tells the tenant by mail.
//!
//! Jobs of one endpoint run one at a time (their concurrency key), so a slow or failing
//! endpoint holds at most one of the worker's slots and never delays the others.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use db::{Db, StoreError};
use jobs::{JobContext, JobError, JobHandler, JobKind};
use saas_core::{TenantId, WebhookEndpointId, WebhookEventId};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::sender::{Answer, SendError, Sender};
use crate::signing;

/// Retries after the first attempt, at most.
pub const MAX_RETRIES: usize = 10;
/// Attempts of one round, at most: the first and the retries.
pub const MAX_ATTEMPTS: i32 = MAX_RETRIES as i32 + 1;

/// The pauses before each retry: 5 s, 1 min, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h,
/// 20 h; the last attempt comes about 72 hours after the first.
pub fn default_schedule() -> Vec<Duration> {
    [
        5, 60, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 72_000,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

/// The job that carries one round of a delivery's attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub delivery: Uuid,
    pub tenant: TenantId,
    pub endpoint: WebhookEndpointId,
    /// Which round of attempts this job carries (0, then one more per redelivery); a
    /// job of an older round does nothing.
    pub round: i32,
}

impl JobKind for DeliverWebhook {
    const KIND: &'static str = "webhooks.deliver";

    fn concurrency_key(&self) -> Option<String> {
        Some(format!("webhook-endpoint:{}", self.endpoint))
    }
}

/// Runs [`DeliverWebhook`] jobs.
#[derive(Clone)]
pub struct Deliverer {
    db: Db,
    sender: Sender,
    schedule: Arc<Vec<Duration>>,
}

impl Deliverer {
    /// `schedule`: the pauses before each retry (at most [`MAX_RETRIES`] are used).
    pub fn new(db: Db, sender: Sender, mut schedule: Vec<Duration>) -> Self {
        schedule.truncate(MAX_RETRIES);
        Self {
            db,
            sender,
            schedule: Arc::new(schedule),
        }
    }
}

/// What a delivery's job needs, read in one statement.
#[derive(sqlx::FromRow)]
struct Pending {
    status: String,
    round: i32,
    created_at: DateTime<Utc>,
    url: String,
    enabled: bool,
    secret: String,
    previous_secret: Option<String>,
    event_id: Uuid,
    event_type: String,
    event_created_at: DateTime<Utc>,
    body: String,
}

#[async_trait]
impl JobHandler<DeliverWebhook> for Deliverer {
    async fn run(&self, job: DeliverWebhook, context: JobContext) -> Result<(), JobError> {
        let mut tx = self.db.tenant_tx(job.tenant).await?;
        let pending: Option<Pending> = sqlx::query_as(
            "SELECT d.status, d.round, d.created_at, e.url, e.enabled, e.secret, \
                    CASE WHEN e.previous_until > now() THEN e.previous_secret END AS previous_secret, \
                    v.id AS event_id, v.type AS event_type, v.created_at AS event_created_at, v.body \
             FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             JOIN webhook_events v ON v.id = d.event_id \
             WHERE d.id = $1 AND d.tenant_id = $2",
        )
        .bind(job.delivery)
        .bind(job.tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        // Gone with its endpoint, already delivered, or superseded by a redelivery.
        let Some(pending) = pending.filter(|p| p.status == "pending" && p.round == job.round)
        else {
            return Ok(());
        };
        if !pending.enabled {
            finish(&mut tx, &job, "skipped").await?;
            ended(&mut tx, &job, &pending).await?;
            tx.commit().await?;
            return Ok(());
        }
        tx.commit().await?;

        let message_id = WebhookEventId::from_uuid(pending.event_id).to_string();
        let mut secrets = vec![pending.secret.as_str()];
        secrets.extend(pending.previous_secret.as_deref());
        let headers = signing::sign(&message_id, Utc::now().timestamp(), &pending.body, &secrets);
        let outcome = self
            .sender
            .send(&pending.url, &headers, &pending.body)
            .await;

        let retry_in = self.schedule.get(context.attempt as usize - 1).copied();
        let mut tx = self.db.tenant_tx(job.tenant).await?;
        let result = record(&mut tx, &job, &outcome, retry_in).await?;
        metrics::counter!("webhook_delivery_attempts_total", "result" => result).increment(1);
        match (result, retry_in) {
            ("succeeded", _) => {
                let latency = (Utc::now() - pending.event_created_at)
                    .to_std()
                    .unwrap_or_default();
                metrics::histogram!("webhook_delivery_seconds").record(latency.as_secs_f64());
                ended(&mut tx, &job, &pending).await?;
                tx.commit().await?;
                Ok(())
            }
            (_, Some(pause)) => {
                tx.commit().await?;
                Err(JobError::RetryIn(failure_text(&outcome), pause))
            }
            _ => {
                disable_if_failing(&mut tx, &job, pending.created_at).await?;
                ended(&mut tx, &job, &pending).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }
}

/// A delivery ended (delivered, out of attempts, or skipped). The end of an erased
/// tenant's last event is the end of the endpoint.
async fn ended(
    conn: &mut PgConnection,
    job: &DeliverWebhook,
    pending: &Pending,
) -> Result<(), StoreError> {
    if pending.event_type == crate::erasure::LAST_EVENT {
        crate::erasure::erase_endpoint_after_last_event(conn, job.tenant, job.endpoint.as_uuid())
            .await?;
    }
    Ok(())
}

fn failure_text(outcome: &Result<Answer, SendError>) -> String {
    match outcome {
        Ok(answer) => format!("the receiver answered {}", answer.status),
        Err(error) => error.to_string(),
    }
}

/// Records an attempt; answers `succeeded`, `retrying` or `failed` (no retry left).
async fn record(
    conn: &mut PgConnection,
    job: &DeliverWebhook,
    outcome: &Result<Answer, SendError>,
    retry_in: Option<Duration>,
) -> Result<&'static str, StoreError> {
    let (status, error, response) = match outcome {
        Ok(answer) => (
            Some(i32::from(answer.status)),
            None,
            Some(&answer.body_prefix),
        ),
        Err(error) => (None, Some(error.to_string()), None),
    };
    let result = match (outcome, retry_in) {
        (Ok(answer), _) if answer.acknowledged() => "succeeded",
        (_, Some(_)) => "retrying",
        _ => "failed",
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(), \
                last_status = $4, last_error = $5, last_response = $6, \
                status = CASE $7 WHEN 'succeeded' THEN 'succeeded' \
                                 WHEN 'failed' THEN 'failed' ELSE 'pending' END, \
                succeeded_at = CASE WHEN $7 = 'succeeded' THEN now() END, \
                next_attempt_at = CASE WHEN $7 = 'retrying' \
                                       THEN now() + make_interval(secs => $8) END \
         WHERE id = $1 AND tenant_id = $2 AND round = $3 AND status = 'pending'",
    )
    .bind(job.delivery)
    .bind(job.tenant.as_uuid())
    .bind(job.round)
    .bind(status)
    .bind(error)
    .bind(response)
    .bind(result)
    .bind(retry_in.unwrap_or_default().as_secs_f64())
    .execute(conn)
    .await?;
    Ok(result)
}

async fn finish(
    conn: &mut PgConnection,
    job: &DeliverWebhook,
    status: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $4, next_attempt_at = NULL \
         WHERE id = $1 AND tenant_id = $2 AND round = $3 AND status = 'pending'",
    )
    .bind(job.delivery)
    .bind(job.tenant.as_uuid())
    .bind(job.round)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// Turns the endpoint off when nothing has reached it since the failed delivery was
/// created (its whole schedule, about three days), and mails the tenant about it.
async fn disable_if_failing(
    conn: &mut PgConnection,
    job: &DeliverWebhook,
    since: DateTime<Utc>,
) -> Result<(), StoreError> {
    let disabled: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET enabled = false, updated_at = now(), \
                disabled_reason = 'every delivery failed since ' || to_char($3 AT TIME ZONE 'UTC', \
                                  'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         WHERE id = $1 AND tenant_id = $2 AND enabled \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries \
                           WHERE endpoint_id = $1 AND succeeded_at >= $3) \
         RETURNING url",
    )
    .bind(job.endpoint.as_uuid())
    .bind(job.tenant.as_uuid())
    .bind(since)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(url) = disabled else {
        return Ok(());
    };
    tracing::warn!(tenant = %job.tenant, endpoint = %job.endpoint, "webhook endpoint turned off: it kept failing");
    metrics::counter!("webhook_endpoints_disabled_total").increment(1);
    let tenant = tenancy::tenants::get(conn, job.tenant).await?;
    if let Some(email) = tenant.email {
        let body = format!(
            "Every delivery to your webhook endpoint {} ({url}) has failed since {}, so it \
             has been turned off and no more events are sent to it.\n\n\
             Once it answers again, turn it back on (PATCH /v1/webhook-endpoints/{} with \
             {{\"enabled\": true}}) and ask for the events it missed to be sent again.\n",
            job.endpoint,
            since.format("%Y-%m-%d %H:%M UTC"),
            job.endpoint,
        );
        outbox::enqueue(
            conn,
            &outbox::NewMessage {
                tenant: job.tenant,
                kind: outbox::Kind::WebhookEndpointDisabled,
                recipient: &email,
                subject: "A webhook endpoint was turned off",
                body: &body,
                dedup_key: &format!("webhook-disabled:{}:{}", job.endpoint, job.delivery),
            },
        )
        .await?;
    }
    Ok(())
}
