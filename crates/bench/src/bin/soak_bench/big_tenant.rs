//! Reads of one tenant holding tens of millions of events in its period: its usage series
//! and an invoice's totals, both read from per-minute rows, against the same total summed
//! from its events.

use std::time::{Duration, Instant};

use bench::{APP, ms, percentile, pg_url};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tenancy::Db;

use crate::{Args, out};

/// Batches of this many events are written straight into the ledger.
const BATCH: u64 = 1_000;
const READS: usize = 21;

pub async fn run(
    args: &Args,
    service: &bench::Service,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let (tenant, key) = bench::create_tenants(&args.database, 1).await?.remove(0);
    let summary: Value = client
        .get(service.url("/v1/usage/summary"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    let period_start: DateTime<Utc> = summary["period_start"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let db = Db::from_pool(
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&pg_url(APP, &args.database))
            .await?,
    );

    // Each batch's events fall within one minute, a minute apart, over the last weeks.
    let seeding = Instant::now();
    let batches = args.big_tenant_events / BATCH;
    let first_minute = Utc::now() - TimeDelta::minutes(batches as i64 + 5);
    for start in (0..batches).step_by(1_000) {
        let end = (start + 1_000).min(batches) - 1;
        let mut tx = db.system_tx("bench seed").await?;
        sqlx::query(
            "INSERT INTO usage_batches (slot, tenant_id, period_start, events, event_ids, \
                                        metrics, event_values, event_times) \
             SELECT (SELECT queue_slot FROM usage_ledger_clock), $1, $2, $3, \
                    array_agg('big-' || b || '-' || i ORDER BY i), \
                    array_fill('tokens'::text, ARRAY[$3]), array_fill(1::numeric, ARRAY[$3]), \
                    array_agg($4 + make_interval(mins => b::int, secs => i * 60.0 / $3) ORDER BY i) \
             FROM generate_series($5::bigint, $6::bigint) AS b, \
                  generate_series(0, $3 - 1) AS i \
             GROUP BY b",
        )
        .bind(tenant.as_uuid())
        .bind(period_start)
        .bind(BATCH as i32)
        .bind(first_minute)
        .bind(start as i64)
        .bind(end as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    out(format!(
        "\nbig tenant: {} events written to the ledger in {:.0} s; waiting for the relay",
        batches * BATCH,
        seeding.elapsed().as_secs_f64()
    ));
    let relaying = Instant::now();
    loop {
        let mut tx = db.system_tx("bench relay wait").await?;
        let waiting: bool = metering::periods::has_unrelayed(&mut tx, tenant, period_start).await?;
        tx.commit().await?;
        if !waiting {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out(format!(
        "big tenant: relayed in {:.0} s",
        relaying.elapsed().as_secs_f64()
    ));

    let sink = metering::ClickHouseSink::new(&bench::clickhouse_settings(&args.database));
    let minute_rows = sink.minute_rows(tenant).await?;
    let stamp = |time: DateTime<Utc>| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let series_url = service.url(&format!(
        "/v1/usage?metric=tokens&granularity=day&from={}&to={}",
        stamp(first_minute - TimeDelta::days(1)),
        stamp(Utc::now() + TimeDelta::minutes(1))
    ));
    let mut series = Vec::new();
    let mut total = 0;
    for _ in 0..READS {
        let started = Instant::now();
        let answer: Value = client
            .get(&series_url)
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        series.push(started.elapsed());
        total = answer["total"].as_u64().unwrap_or(0);
    }
    let mut totals = Vec::new();
    let mut invoice_total = 0;
    for _ in 0..READS {
        let started = Instant::now();
        let read = sink.period_totals(tenant, period_start).await?;
        totals.push(started.elapsed());
        invoice_total = read.iter().map(|(_, total)| *total).sum::<u128>();
    }
    let mut from_events = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let _: u64 = sink
            .client()
            .query("SELECT sum(value) FROM usage_events FINAL WHERE tenant_id = toUUID(?)")
            .bind(tenant.as_uuid().to_string())
            .fetch_one()
            .await?;
        from_events.push(started.elapsed());
    }
    out(format!(
        "big tenant ({} events, {minute_rows} minute rows): GET /v1/usage p50 {:.1} ms, p99 \
         {:.1} ms (total {total}); invoice totals p50 {:.1} ms (total {invoice_total}); the \
         same total summed from events (FINAL) p50 {:.0} ms. Goal: p50 under 100 ms",
        batches * BATCH,
        ms(percentile(&mut series.clone(), 50.0)),
        ms(percentile(&mut series, 99.0)),
        ms(percentile(&mut totals, 50.0)),
        ms(percentile(&mut from_events, 50.0)),
    ));
    Ok(())
}
