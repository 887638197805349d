//! `usage_metering`: probe events through the real ledger path, read back exactly.

use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use metering::event::UsageEvent;
use saas_core::{BillingCycle, Metric};
use uuid::Uuid;

use super::{CheckStatus, Outcome, USAGE_PROBE, ensure_probe};
use crate::state::AppState;

/// Probe events kept before they are cleaned out.
const PROBE_EVENTS_KEPT: u64 = 3_000;

pub(super) async fn usage_metering(state: &AppState) -> Outcome {
    let sink = &state.clickhouse;
    let version = sink
        .server_version()
        .await
        .map_err(|e| format!("ClickHouse unreachable: {e}"))?;
    if !sink.schema_present().await.map_err(|e| e.to_string())? {
        return Err("ClickHouse schema missing: run `saas migrate`".into());
    }
    ensure_usage_probe(state).await?;
    clean_probe_events(state).await?;

    let now = Utc::now();
    let run = Uuid::now_v7().simple().to_string();
    let events: Vec<UsageEvent> = Metric::ALL
        .iter()
        .enumerate()
        .map(|(i, metric)| UsageEvent {
            id: format!("readiness-{run}-{metric}"),
            metric: *metric,
            value: 1000 + i as u64,
            time: now.with_nanosecond(0).unwrap_or(now),
        })
        .collect();
    let acknowledged = Instant::now();
    let outcome = metering::ledger::ingest(&state.db, USAGE_PROBE, &events, 0, now)
        .await
        .map_err(|e| format!("ingest refused the probe: {e}"))?;
    if outcome.accepted != events.len() as u64 {
        return Err(format!(
            "ingest accepted {} of {} probe events",
            outcome.accepted,
            events.len()
        ));
    }
    // Visible in ClickHouse, through the relay, with the exact values.
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    loop {
        let arrived = sink
            .values_of(USAGE_PROBE, &ids)
            .await
            .map_err(|e| e.to_string())?;
        if arrived.len() == events.len() {
            for event in &events {
                if arrived.get(&event.id) != Some(&event.value) {
                    return Err(format!("{} read back wrong from ClickHouse", event.metric));
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok((
        CheckStatus::Pass,
        format!(
            "ClickHouse {version}; probe events of {} visible in {} ms",
            Metric::ALL.map(|m| m.as_str()).join(", "),
            acknowledged.elapsed().as_millis()
        ),
    ))
}

/// The probe that meters and is rated. An hour-long cycle keeps its periods, and so its
/// upcoming invoice, small.
pub(super) async fn ensure_usage_probe(state: &AppState) -> Result<(), String> {
    ensure_probe(
        state,
        USAGE_PROBE,
        "readiness probe (usage)",
        "starter",
        BillingCycle::Seconds(3600),
    )
    .await
}

/// Keeps the probe's ledger and ClickHouse rows from growing without bound.
async fn clean_probe_events(state: &AppState) -> Result<(), String> {
    let count = state
        .clickhouse
        .event_count(USAGE_PROBE)
        .await
        .map_err(|e| e.to_string())?;
    if count > PROBE_EVENTS_KEPT {
        metering::erasure::erase_ledger(&state.db, USAGE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        state
            .clickhouse
            .erase_tenant(USAGE_PROBE, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
