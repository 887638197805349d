//! Usage events as clients send them, and the rules an event must meet to be metered.

use std::collections::HashSet;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use saas_core::Metric;
use serde::Deserialize;

pub const MAX_BATCH_EVENTS: usize = 1000;
pub const MAX_EVENT_ID_LEN: usize = 128;
/// How far ahead of the server's clock a timestamp may be (client clock skew).
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);
/// How old an event may be; also how long event ids are remembered for deduplication.
pub const MAX_EVENT_AGE: TimeDelta = TimeDelta::days(35);

/// One event as sent. Unknown fields are refused so that a typo (`"valeu"`) is an error,
/// not a silently metered zero.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    /// Unique per tenant; a retry with the same id is counted once. 1 to 128 printable
    /// ASCII characters.
    pub id: String,
    /// `queries`, `tokens` or `bytes`.
    pub metric: String,
    /// A non-negative integer up to 2^64 - 1.
    pub value: u64,
    /// RFC 3339; at most 5 minutes ahead and 35 days behind the server. Defaults to the
    /// time of arrival.
    pub timestamp: Option<String>,
}

/// A batch as sent.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub events: Vec<RawEvent>,
}

/// A validated event, ready to meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub id: String,
    pub metric: Metric,
    pub value: u64,
    /// Whole seconds: the precision ClickHouse stores.
    pub time: DateTime<Utc>,
}

/// Why a batch was refused; `code` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidBatch {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: String) -> InvalidBatch {
    InvalidBatch { code, message }
}

/// A validated batch: the events to meter (first occurrence of each id) and how many
/// more carried an id already seen in the same batch.
#[derive(Debug, Clone)]
pub struct ValidBatch {
    pub events: Vec<UsageEvent>,
    pub in_batch_duplicates: u64,
}

/// Checks every event; one bad event refuses the whole batch (all or nothing).
pub fn validate_batch(batch: RawBatch, now: DateTime<Utc>) -> Result<ValidBatch, InvalidBatch> {
    if batch.events.is_empty() {
        return Err(invalid(
            "empty_batch",
            "events must hold at least one event".into(),
        ));
    }
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(invalid(
            "batch_too_large",
            format!(
                "a batch holds at most {MAX_BATCH_EVENTS} events, not {}",
                batch.events.len()
            ),
        ));
    }
    let arrival = truncate_to_second(now);
    let mut seen = HashSet::with_capacity(batch.events.len());
    let mut events = Vec::with_capacity(batch.events.len());
    let mut in_batch_duplicates = 0;
    for (index, raw) in batch.events.into_iter().enumerate() {
        let event = validate_event(raw, now, arrival)
            .map_err(|error| invalid(error.code, format!("events[{index}]: {}", error.message)))?;
        if seen.insert(event.id.clone()) {
            events.push(event);
        } else {
            in_batch_duplicates += 1;
        }
    }
    Ok(ValidBatch {
        events,
        in_batch_duplicates,
    })
}

fn validate_event(
    raw: RawEvent,
    now: DateTime<Utc>,
    arrival: DateTime<Utc>,
) -> Result<UsageEvent, InvalidBatch> {
    if raw.id.is_empty()
        || raw.id.len() > MAX_EVENT_ID_LEN
        || !raw.id.bytes().all(|b| (0x20..=0x7e).contains(&b))
    {
        return Err(invalid(
            "invalid_event_id",
            format!("id must be 1 to {MAX_EVENT_ID_LEN} printable ASCII characters"),
        ));
    }
    let metric: Metric = raw
        .metric
        .parse()
        .map_err(|e: saas_core::UnknownMetric| invalid("unknown_metric", e.to_string()))?;
    let time = match raw.timestamp {
        None => arrival,
        Some(text) => {
            let time = DateTime::parse_from_rfc3339(&text)
                .map_err(|_| {
                    invalid(
                        "invalid_timestamp",
                        format!("timestamp {text:?} is not RFC 3339"),
                    )
                })?
                .with_timezone(&Utc);
            if time > now + MAX_FUTURE_SKEW {
                return Err(invalid(
                    "timestamp_in_future",
                    "timestamp is more than 5 minutes in the future".into(),
                ));
            }
            if time < now - MAX_EVENT_AGE {
                return Err(invalid(
                    "timestamp_too_old",
                    "timestamp is more than 35 days old".into(),
                ));
            }
            truncate_to_second(time)
        }
    };
    Ok(UsageEvent {
        id: raw.id,
        metric,
        value: raw.value,
        time,
    })
}

fn truncate_to_second(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(TimeDelta::seconds(1)).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: &str, metric: &str, value: u64, timestamp: Option<&str>) -> RawEvent {
        RawEvent {
            id: id.into(),
            metric: metric.into(),
            value,
            timestamp: timestamp.map(Into::into),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-06-01T12:00:00.750Z".parse().unwrap()
    }

    fn code(events: Vec<RawEvent>) -> &'static str {
        validate_batch(RawBatch { events }, now()).unwrap_err().code
    }

    #[test]
    fn a_good_batch_is_kept_in_order_with_in_batch_twins_dropped() {
        let batch = RawBatch {
            events: vec![
                raw("a", "queries", 1, None),
                raw(
                    "b",
                    "tokens",
                    u64::MAX,
                    Some("2026-06-01T11:59:30.999+02:00"),
                ),
                raw("a", "bytes", 7, None),
            ],
        };
        let valid = validate_batch(batch, now()).unwrap();
        assert_eq!(valid.in_batch_duplicates, 1);
        assert_eq!(valid.events.len(), 2);
        assert_eq!(valid.events[0].metric, Metric::Queries);
        assert_eq!(
            valid.events[0].time,
            "2026-06-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(valid.events[1].value, u64::MAX);
        assert_eq!(
            valid.events[1].time,
            "2026-06-01T09:59:30Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn bad_events_refuse_the_whole_batch_with_a_stable_code() {
        assert_eq!(code(vec![]), "empty_batch");
        assert_eq!(
            code(
                (0..=MAX_BATCH_EVENTS)
                    .map(|i| raw(&i.to_string(), "queries", 1, None))
                    .collect()
            ),
            "batch_too_large"
        );
        assert_eq!(code(vec![raw("", "queries", 1, None)]), "invalid_event_id");
        assert_eq!(
            code(vec![raw(&"x".repeat(129), "queries", 1, None)]),
            "invalid_event_id"
        );
        assert_eq!(
            code(vec![raw("tab\there", "queries", 1, None)]),
            "invalid_event_id"
        );
        assert_eq!(code(vec![raw("é", "queries", 1, None)]), "invalid_event_id");
        assert_eq!(code(vec![raw("ok", "Queries", 1, None)]), "unknown_metric");
        assert_eq!(
            code(vec![raw("ok", "queries", 1, Some("yesterday"))]),
            "invalid_timestamp"
        );
        assert_eq!(
            code(vec![raw("ok", "queries", 1, Some("2026-06-01T12:05:01Z"))]),
            "timestamp_in_future"
        );
        assert_eq!(
            code(vec![raw("ok", "queries", 1, Some("2026-04-27T11:59:59Z"))]),
            "timestamp_too_old"
        );
        // A bad event anywhere refuses the good ones too, and says which.
        let error = validate_batch(
            RawBatch {
                events: vec![raw("ok", "queries", 1, None), raw("", "queries", 1, None)],
            },
            now(),
        )
        .unwrap_err();
        assert!(error.message.starts_with("events[1]"), "{}", error.message);
    }

    #[test]
    fn limits_are_inclusive() {
        let ok = vec![
            raw(&"x".repeat(128), "queries", 0, Some("2026-06-01T12:05:00Z")),
            raw("old", "queries", 0, Some("2026-04-27T12:00:01Z")),
        ];
        assert!(validate_batch(RawBatch { events: ok }, now()).is_ok());
    }
}
