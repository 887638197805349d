//! Usage metering. Postgres is the durable ledger; ClickHouse, reached through
//! [`clickhouse_sink`], is the sink that usage reads and invoices come from.

pub mod clickhouse_sink;

pub use clickhouse_sink::{ClickHouseSettings, ClickHouseSink, SinkError};
