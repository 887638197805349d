//! A calm tenant beside a hot one: the hot tenant keeps hundreds of batches in flight,
//! the calm one sends one batch at a time; the calm one's latency and answers are what
//! count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bench::{ms, percentile};

use crate::{Args, out};

const SECONDS: u64 = 20;

pub async fn run(
    args: &Args,
    service: &bench::Service,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let tenants = bench::create_tenants(&args.database, 2).await?;
    let (hot, calm) = (&tenants[0].1, &tenants[1].1);
    let url = service.url("/v1/usage/events");
    let until = Instant::now() + Duration::from_secs(SECONDS);

    let hot_senders = (0..args.hot_batches).map(|sender| {
        let (client, url, key) = (client.clone(), url.clone(), hot.clone());
        tokio::spawn(async move {
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut round = 0;
            while Instant::now() < until {
                round += 1;
                let status = post(&client, &url, &key, &format!("hot-{sender}-{round}")).await;
                *statuses.entry(status).or_default() += 1;
                if status != 202 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            statuses
        })
    });
    let hot_senders: Vec<_> = hot_senders.collect();

    let mut calm_latencies = Vec::new();
    let mut calm_statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let sent = Instant::now();
        let status = post(client, &url, calm, &format!("calm-{round}")).await;
        calm_latencies.push(sent.elapsed());
        *calm_statuses.entry(status).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hot_statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for sender in hot_senders {
        for (status, count) in sender.await? {
            *hot_statuses.entry(status).or_default() += count;
        }
    }
    out(format!(
        "\ncalm tenant beside a hot one ({} batches in flight, {SECONDS} s): calm p50 {:.1} ms, \
         p99 {:.1} ms over {} batches; calm answers {:?}; hot answers {:?}",
        args.hot_batches,
        ms(percentile(&mut calm_latencies.clone(), 50.0)),
        ms(percentile(&mut calm_latencies, 99.0)),
        round,
        calm_statuses,
        hot_statuses
    ));
    Ok(())
}

/// Posts a batch of 100 fresh events; the status (0: no answer).
async fn post(client: &reqwest::Client, url: &str, key: &str, prefix: &str) -> u16 {
    let events: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"id":"{prefix}-{i}","metric":"tokens","value":1}}"#))
        .collect();
    client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(format!(r#"{{"events":[{}]}}"#, events.join(",")))
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}
