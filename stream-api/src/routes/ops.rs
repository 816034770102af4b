//! Operations: liveness, readiness (really asks the broker and Redis), Prometheus metrics, per-tenant metrics,
//! the OpenAPI document and the event-type catalog.

use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemas::EventType;
use serde_json::{json, Value};
use std::time::Duration;

const OPENAPI: &str = include_str!("../../openapi.json");

pub async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// 200 when the broker answered a metadata request, Redis answered PING, and the configuration log is replayed;
/// otherwise 503 naming what is down.
pub async fn ready(State(state): State<AppState>) -> Response {
    let p = &state.pipeline;
    let (kafka, redis) = tokio::join!(
        p.kafka().healthcheck(Duration::from_secs(2)),
        tokio::time::timeout(Duration::from_secs(2), p.redis().healthcheck())
    );
    let kafka_ok = kafka.is_ok();
    let redis_ok = matches!(redis, Ok(Ok(())));
    let config_ok = p.configs().is_caught_up();
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let checks =
        json!({"kafka": word(kafka_ok), "redis": word(redis_ok), "config": if config_ok { "ok" } else { "replaying" }});
    if kafka_ok && redis_ok && config_ok {
        return Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    let down: Vec<&str> = [("kafka", kafka_ok), ("redis", redis_ok), ("config", config_ok)]
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    let mut e = ApiError::unavailable("not_ready", format!("not ready: {}", down.join(", ")), 2);
    e.extra.insert("checks".into(), checks);
    e.into_response()
}

pub async fn prometheus(State(state): State<AppState>) -> Response {
    let body = state.prometheus.as_ref().map(|h| h.render()).unwrap_or_default();
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}

/// `GET /metrics/{tenant}`: rates, totals, rejects by reason, latency percentiles, top types and sources.
pub async fn tenant_metrics(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    state.pipeline.stats().flush().await;
    let m =
        state.pipeline.stats().read(&t).await.map_err(|_| {
            ApiError::unavailable("redis_unavailable", "tenant metrics are unavailable; retry later", 2)
        })?;
    Ok(Json(m).into_response())
}

pub async fn openapi() -> Response {
    let mut res = OPENAPI.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub async fn event_types() -> Response {
    let types: Vec<Value> = EventType::ALL
        .iter()
        .map(|t| json!({"eventType": t, "category": t.category(), "schema": format!("/event-types/{t}/schema")}))
        .collect();
    Json(json!({"eventTypes": types, "sources": schemas::catalog::KNOWN_SOURCES})).into_response()
}

pub async fn event_type_schema(State(state): State<AppState>, Path(t): Path<String>) -> Result<Response, ApiError> {
    let t = EventType::parse(&t).ok_or_else(|| ApiError::not_found("unknown_event_type", "no such event type"))?;
    let mut res = state.pipeline.catalog().schema(t).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/schema+json"));
    Ok(res)
}
