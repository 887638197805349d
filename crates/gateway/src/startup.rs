//! Building and running the service. `main` stays thin; tests build the same
//! `Application` on port 0.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metering::ClickHouseSink;
use tenancy::{Db, MIGRATOR};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::config::Config;
use crate::error::ApiError;
use crate::key_cache::KeyCache;
use crate::request_context::request_context;
use crate::routes;
use crate::state::{AppState, Services};
use crate::workers;
use payments::PaymentProvider;
use payments::stripe_provider::StripeProvider;
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown_grace: Duration,
}

impl Application {
    /// Migrates (if configured), connects, binds and assembles the router. Binding port 0
    /// picks a free port, which [`Application::port`] reports.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.migrate_on_start {
            migrate(&config).await?;
        }
        let state = build_state(config.clone()).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("could not listen on {}", config.listen))?;
        Ok(Self {
            listener,
            router: router(state.clone()),
            state,
            shutdown_grace: config.shutdown_grace(),
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|addr| addr.port())
            .unwrap_or(0)
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests for up to the
    /// configured grace period.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains like [`Self::run_until_stopped`].
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let workers = if self.state.config.workers.enabled {
            workers::spawn(&self.state, stopping_rx.clone())
        } else {
            Vec::new()
        };
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let state = self.state.clone();
        let server = axum::serve(self.listener, service).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            state
                .stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = stopping_tx.send(true);
        });
        let grace = self.shutdown_grace;
        let result = tokio::select! {
            result = server => result,
            () = async move {
                let _ = stopping_rx.wait_for(|stopping| *stopping).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "drain grace expired; stopping");
                Ok(())
            }
        };
        // Workers saw the same stop signal; let them finish the step they are in.
        let _ = tokio::time::timeout(grace, futures_join_all(workers)).await;
        result
    }
}

async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let db = Db::connect_lazy(config.database_options(), config.database.max_connections);
    let mut clickhouse = ClickHouseSink::new(&config.clickhouse_settings());
    // Best effort at start: if ClickHouse is down now, the service still starts (ingest
    // keeps working into Postgres) and validation simply stays off.
    match clickhouse.detect_version().await {
        Ok(version) => tracing::info!(%version, "connected to ClickHouse"),
        Err(error) => tracing::warn!(%error, "ClickHouse not reachable at start"),
    }
    Ok(AppState::new(Services {
        db,
        clickhouse,
        prometheus: crate::metrics::install(),
        clock: Arc::new(saas_core::SystemClock),
        key_cache: KeyCache::new(Duration::from_millis(config.http.key_cache_ttl_ms)),
        payments: payment_provider(&config)?,
        tenant_writes: crate::limits::TenantWriteLimiter::per_minute(
            config.http.sensitive_writes_per_minute,
        ),
        exports: crate::limits::TenantSlots::exports(),
        ingest_slots: crate::limits::TenantSlots::ingest(config.http.ingest_batches_per_tenant),
        readiness: Default::default(),
        webhooks: config.webhook_sender().map_err(anyhow::Error::msg)?,
        stopping: Default::default(),
        config,
    }))
}

fn payment_provider(config: &Config) -> anyhow::Result<Option<Arc<dyn PaymentProvider>>> {
    let Some(key) = &config.stripe.secret_key else {
        tracing::warn!("no Stripe key configured: paid signups and billing are unavailable");
        return Ok(None);
    };
    let provider = StripeProvider::new(
        key.expose_secret(),
        &config.stripe.api_base,
        std::time::Duration::from_millis(config.stripe.timeout_ms),
    )?;
    Ok(Some(Arc::new(provider)))
}

/// The complete HTTP service for `state`, with every cross-cutting layer.
pub fn router(state: AppState) -> Router {
    let config = &state.config;
    let (api, openapi) = routes::api_router().split_for_parts();
    let openapi_json = openapi
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    let body_limit = config.http.body_limit_bytes;
    let timeout = config.request_timeout();
    let routes = if config.roles.api {
        api.route(
            "/openapi.json",
            get(move || async move { ([("content-type", "application/json")], openapi_json) }),
        )
        .merge(crate::dashboard::router())
    } else {
        // A worker-only process: what a load balancer and Prometheus ask, nothing else.
        routes::health::probes_router()
    };
    routes
        .fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) })
        .with_state(state)
        // Layers run bottom to top on the way in: the request context is outermost so that
        // even timeouts, panics and oversized bodies get an id, a log line and the JSON shape.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(CatchPanicLayer::custom(|_panic| {
            ApiError::internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(axum::middleware::from_fn(request_context))
}

/// The OpenAPI document as served at /openapi.json.
pub fn openapi_document() -> String {
    let (_, openapi) = routes::api_router().split_for_parts();
    openapi
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// Applies pending Postgres migrations (as the owner role) and ClickHouse migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let owner = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(config.migration_options())
        .await
        .context("could not connect to Postgres as the migration role")?;
    MIGRATOR
        .run(&owner)
        .await
        .context("Postgres migrations failed")?;
    owner.close().await;
    let applied = ClickHouseSink::migrate(&config.clickhouse_settings())
        .await
        .context("ClickHouse migrations failed")?;
    tracing::info!(clickhouse_applied = ?applied, "migrations complete");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

async fn futures_join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}
