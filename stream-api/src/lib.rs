//! evstream's HTTP API (axum). `app(state)` builds the router; `run` serves it until shutdown.
//!
//! Layout:
//! - [`state`]: `AppState` (the pipeline, limits, the Prometheus handle) and `ApiConfig`.
//! - [`error`]: `ApiError`, rendered as `application/problem+json` (RFC 9457) with a stable `code` and per-field errors.
//! - [`body`]: reading request bodies under a size and time limit, and parsing JSON into our error shape.
//! - [`auth`]: bearer keys -> `Principal` (admin or one tenant).
//! - [`routes`]: `events` (publish, bulk, read, live tail), `stream_config`, `tenants`, `ops` (health, readiness,
//!   Prometheus metrics, per-tenant metrics, OpenAPI, event-type catalog).
//! - [`telemetry`]: the request middleware: metrics per route template, in-flight bound, request span.

pub mod auth;
pub mod body;
pub mod bootstrap;
pub mod error;
pub mod routes;
pub mod state;
pub mod telemetry;

pub use state::{ApiConfig, AppState};

use axum::Router;
use std::future::Future;
use tokio::net::TcpListener;

/// The whole API as a router over `state`.
pub fn app(state: AppState) -> Router {
    routes::router(state.clone())
        .layer(axum::middleware::from_fn_with_state(state.clone(), telemetry::middleware))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(state);
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
