use std::ops::Deref;
use std::sync::Arc;

use metering::ClickHouseSink;
use metrics_exporter_prometheus::PrometheusHandle;
use payments::PaymentProvider;
use saas_core::clock::SharedClock;
use tenancy::Db;

use crate::config::Config;
use crate::key_cache::KeyCache;

/// Everything a handler may need. Cheap to clone: one `Arc` inside.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub config: Config,
    pub db: Db,
    pub clickhouse: ClickHouseSink,
    pub prometheus: PrometheusHandle,
    pub clock: SharedClock,
    pub key_cache: KeyCache,
    /// `None` when no Stripe key is configured: billing is then not available.
    pub payments: Option<Arc<dyn PaymentProvider>>,
    /// Writes that change access or money, per tenant.
    pub tenant_writes: crate::limits::TenantWriteLimiter,
    pub exports: crate::limits::TenantSlots,
    /// Usage batches being metered, per tenant.
    pub ingest_slots: crate::limits::TenantSlots,
    pub readiness: crate::readiness::ReadinessCache,
    /// Sends webhook deliveries, and checks the URLs of new endpoints.
    pub webhooks: webhooks::Sender,
    /// Set when shutdown begins: `/readyz` then answers 503, so a load balancer stops
    /// sending requests while the ones in flight drain.
    pub stopping: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }

    /// Collection and dunning, when a payment provider is configured.
    pub fn collector(&self) -> Option<billing::collection::Collector> {
        self.payments.as_ref().map(|payments| {
            billing::collection::Collector::new(
                self.db.clone(),
                payments.clone(),
                self.config.dunning_schedule(),
            )
        })
    }

    /// Who collects the invoices that runs make.
    pub fn collection(&self) -> billing::invoices::Collection {
        match self.payments {
            Some(_) => billing::invoices::Collection::Stripe,
            None => billing::invoices::Collection::Elsewhere,
        }
    }
}

impl Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}
