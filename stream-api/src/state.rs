//! Shared state of the HTTP API.

use metrics_exporter_prometheus::PrometheusHandle;
use producer::alerts::AlertStore;
use producer::audit::AuditLog;
use producer::topics::Topics;
use producer::Pipeline;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Limits and settings of the API (flags of `evstream api`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest body of `POST /events` and of config documents.
    pub max_body_bytes: usize,
    /// Largest body of `POST /events/bulk`.
    pub max_bulk_bytes: usize,
    /// Most items in one bulk request.
    pub max_bulk_items: usize,
    /// A body must arrive within this time (slow senders get 408).
    pub body_timeout_ms: u64,
    /// Requests handled at once; beyond it the API answers 503 at once.
    pub max_in_flight: usize,
    /// Live tails (SSE) open at once.
    pub max_sse_streams: usize,
    /// Partitions and replication of topics created for tenants.
    pub partitions: i32,
    pub replication: i32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_bulk_bytes: 10 * 1024 * 1024,
            max_bulk_items: 1000,
            body_timeout_ms: 10_000,
            max_in_flight: 4096,
            max_sse_streams: 256,
            partitions: 6,
            replication: 1,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    pub cfg: Arc<ApiConfig>,
    pub prometheus: Option<PrometheusHandle>,
    pub topics: Arc<Topics>,
    pub in_flight: Arc<Semaphore>,
    pub sse_streams: Arc<Semaphore>,
    pub alerts: AlertStore,
    pub audit: AuditLog,
}

impl AppState {
    pub fn new(
        pipeline: Pipeline,
        cfg: ApiConfig,
        prometheus: Option<PrometheusHandle>,
        topics: Arc<Topics>,
        alerts: AlertStore,
        audit: AuditLog,
    ) -> Self {
        Self {
            alerts,
            audit,
            pipeline,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
            sse_streams: Arc::new(Semaphore::new(cfg.max_sse_streams)),
            cfg: Arc::new(cfg),
            prometheus,
            topics,
        }
    }
}
