//! Usage metering.
//!
//! - [`event`]: what a usage event is and the rules it must meet.
//! - [`ledger`]: ingestion. Events are committed to Postgres together with the quota
//!   counters before they are acknowledged; hard limits are exact under concurrency.
//! - [`counters`]: a tenant's exact usage of the period so far, from those counters.
//! - [`periods`]: closes a billing period to usage before it is invoiced.
//! - [`relay`]: copies the ledger to ClickHouse, in order, replay-safe.
//! - [`usage_query`]: real-time reads, ClickHouse plus whatever the relay has not copied.
//! - [`quota`]: quota arithmetic, pure.
//! - [`retention`]: keeps the ledger bounded: forgets dedup keys past the window, and
//!   relayed events, a whole partition at a time.

pub mod clickhouse_sink;
pub mod counters;
pub mod erasure;
pub mod event;
pub mod export;
pub mod ledger;
pub mod periods;
pub mod quota;
pub mod relay;
pub mod retention;
pub mod shards;
pub mod tls;
pub mod usage_query;
pub mod usage_rows;

pub use clickhouse_sink::{ClickHouseSettings, ClickHouseSink, SinkError};
pub use shards::ClusterSettings;
