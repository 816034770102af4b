//! The request middleware: one span per request, metrics by route template (never the raw path), and a bound on
//! requests in flight (beyond it: 503 at once, so overload never queues without limit).

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use producer::metric_names as m;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Bucket bounds (seconds) of every histogram (all of them are latencies): from half a millisecond to 30 s, well past
/// the point where requests have timed out. Buckets, not summaries, so that quantiles add up across instances
/// (`histogram_quantile`).
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// How often recorded samples are folded into the histograms' buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder: histograms with [`LATENCY_BUCKETS`], and upkeep on its
/// own thread, so that samples never pile up in memory when nobody scrapes `/metrics`.
pub fn install_prometheus() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS)?.install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })
        .map_err(MetricsError::Upkeep)?;
    Ok(handle)
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics recorder: {0}")]
    Recorder(#[from] BuildError),
    #[error("metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().as_str().to_string();
    let audited = matches!(method.as_str(), "POST" | "PUT" | "DELETE")
        && (route.starts_with("/tenants") || route.starts_with("/stream-config"));
    let audit = audited.then(|| {
        let actor = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|k| state.pipeline.configs().authenticate(k.trim()))
            .map_or_else(
                || "anonymous".to_string(),
                |p| match p {
                    producer::config_log::Principal::Admin => "admin".to_string(),
                    producer::config_log::Principal::Tenant { key_id, .. } => format!("key:{key_id}"),
                },
            );
        let path = req.uri().path().to_string();
        let tenant = path.split('/').nth(2).map(str::to_string);
        (actor, path, tenant)
    });
    let exempt = matches!(route.as_str(), "/health" | "/ready" | "/metrics");
    let _permit = if exempt {
        None
    } else {
        match state.in_flight.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return ApiError::unavailable("overloaded", "too many requests in flight; retry shortly", 1)
                    .into_response()
            }
        }
    };
    let started = Instant::now();
    let gauge = metrics::gauge!(m::HTTP_REQUESTS_IN_FLIGHT);
    gauge.increment(1.0);
    let span = tracing::info_span!("request", %method, %route, status = tracing::field::Empty);
    let res = next.run(req).instrument(span.clone()).await;
    gauge.decrement(1.0);
    let status = res.status().as_u16();
    span.record("status", status);
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route.clone()).record(elapsed);
    if let (Some((actor, path, tenant)), true) = (audit, status < 400) {
        // Successful configuration and alert actions go to the audit trail, with who did them.
        state.audit.append(producer::audit::AuditEntry {
            actor,
            action: format!("{method} {route}"),
            tenant,
            subject: path,
            outcome: status.to_string(),
        });
    }
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route, "method" => method, "status" => status.to_string())
        .increment(1);
    res
}
