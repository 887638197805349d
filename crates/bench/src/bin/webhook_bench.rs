//! Webhook delivery benchmark: events committed for 100 tenants, one endpoint each on a
//! receiver on 127.0.0.1, one of the endpoints slow; prints delivery throughput, the
//! latency from an event's commit to the receiver's acknowledgement (p50, p99) for the
//! other endpoints, and what the slow one got meanwhile.
//!
//!     scripts/stack.sh up
//!     cargo build --release --bin saas --bin webhook-bench && target/release/webhook-bench

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bench::{APP, Service, fresh_database, ms, out, percentile, pg_url};
use clap::Parser;
use saas_core::{ApiKeyId, TenantId};
use sqlx::postgres::PgPoolOptions;
use tenancy::Db;
use webhooks::EventData;
use webhooks::endpoints::NewEndpoint;
use webhooks::events::ApiKeyChanged;

#[derive(Parser)]
struct Args {
    /// Events in all, spread evenly over the endpoints.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Endpoints, one per tenant; the first is the slow one.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// How long the slow endpoint takes to answer each delivery.
    #[arg(long, default_value_t = 2_000)]
    slow_ms: u64,
    /// Events committed per transaction.
    #[arg(long, default_value_t = 10)]
    per_commit: usize,
    #[arg(long, default_value = "saas_webhook_bench")]
    database: String,
}

/// When each event reached the receiver, by `webhook-id`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<HashMap<String, Instant>>>);

struct Receiver {
    received: Received,
    slow: Duration,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(endpoint): Path<usize>,
    headers: HeaderMap,
) -> StatusCode {
    if endpoint == 0 {
        tokio::time::sleep(receiver.slow).await;
    }
    if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
        let mut received = receiver.received.0.lock().expect("not poisoned");
        received.entry(id.to_owned()).or_insert_with(Instant::now);
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    out(format!(
        "webhook-bench: {} events over {} endpoints (endpoint 0 answers after {} ms)",
        args.events, args.endpoints, args.slow_ms
    ));
    fresh_database(&args.database).await?;
    let tenants: Vec<TenantId> = bench::create_tenants(&args.database, args.endpoints)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    let received = Received::default();
    let receiver = Arc::new(Receiver {
        received: received.clone(),
        slow: Duration::from_millis(args.slow_ms),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route("/hook/{endpoint}", post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = Db::from_pool(
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg_url(APP, &args.database))
            .await?,
    );
    for (index, tenant) in tenants.iter().enumerate() {
        let mut tx = db.tenant_tx(*tenant).await?;
        let endpoint = NewEndpoint {
            url: format!("http://127.0.0.1:{port}/hook/{index}"),
            events: vec!["*".into()],
            description: String::new(),
            enabled: true,
        };
        webhooks::endpoints::create(&mut tx, *tenant, &endpoint)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        tx.commit().await?;
    }
    let service = Service::start(
        &args.database,
        &[
            ("SAAS_WEBHOOKS__ALLOW_HTTP", "true"),
            ("SAAS_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true"),
            ("SAAS_WORKERS__JOB_POLL_MS", "100"),
        ],
    )
    .await?;

    // Events go in round-robin over the tenants, a few transactions at once.
    let per_tenant = args.events / args.endpoints;
    let started = Instant::now();
    let mut committed: HashMap<String, (usize, Instant)> = HashMap::new();
    let mut rounds = Vec::new();
    for round in 0..per_tenant.div_ceil(args.per_commit) {
        for (index, tenant) in tenants.iter().enumerate() {
            let count = args.per_commit.min(per_tenant - round * args.per_commit);
            rounds.push((index, *tenant, count));
        }
    }
    for chunk in rounds.chunks(4) {
        let commits = chunk.iter().map(|(index, tenant, count)| {
            let db = db.clone();
            let (index, tenant, count) = (*index, *tenant, *count);
            async move {
                let mut tx = db.tenant_tx(tenant).await?;
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    let data = EventData::ApiKeyCreated(ApiKeyChanged {
                        api_key_id: ApiKeyId::new(),
                        name: "bench".into(),
                        prefix: "sk_bench".into(),
                    });
                    ids.push(webhooks::emit(&mut tx, tenant, data).await?.to_string());
                }
                tx.commit().await?;
                let at = Instant::now();
                anyhow::Ok(ids.into_iter().map(move |id| (id, (index, at))))
            }
        });
        for ids in futures_util::future::try_join_all(commits).await? {
            committed.extend(ids);
        }
    }
    let committing = started.elapsed();
    out(format!(
        "  {} events committed in {:.1} s",
        committed.len(),
        committing.as_secs_f64()
    ));

    // Until every event of the fast endpoints is acknowledged.
    let fast_total = committed.values().filter(|(index, _)| *index != 0).count();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        let fast_done = {
            let received = received.0.lock().expect("not poisoned");
            committed
                .iter()
                .filter(|(id, (index, _))| *index != 0 && received.contains_key(*id))
                .count()
        };
        if fast_done == fast_total || Instant::now() > deadline {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            out(format!(
                "  {fast_done} of {fast_total} delivered to the fast endpoints"
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = received.0.lock().expect("not poisoned").clone();
    drop(service);

    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    let mut last_ack = started;
    for (id, (index, at)) in &committed {
        if let Some(acked) = received.get(id) {
            let latency = acked.saturating_duration_since(*at);
            if *index == 0 {
                slow.push(latency);
            } else {
                fast.push(latency);
                last_ack = last_ack.max(*acked);
            }
        }
    }
    let span = last_ack.duration_since(started);
    out(String::new());
    out(format!(
        "delivered to the fast endpoints:      {:>8} of {fast_total}",
        fast.len()
    ));
    out(format!(
        "delivery throughput:                  {:>8.0} events/s (first commit to last acknowledgement)",
        fast.len() as f64 / span.as_secs_f64()
    ));
    out(format!(
        "commit to acknowledgement p50:        {:>8.1} ms",
        ms(percentile(&mut fast, 50.0))
    ));
    out(format!(
        "commit to acknowledgement p99:        {:>8.1} ms",
        ms(percentile(&mut fast, 99.0))
    ));
    out(format!(
        "the slow endpoint meanwhile:          {:>8} of {} delivered (one at a time, {} ms each)",
        slow.len(),
        committed.len() - fast_total,
        args.slow_ms
    ));
    Ok(())
}
