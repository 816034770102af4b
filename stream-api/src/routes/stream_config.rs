//! `GET /stream-config/{tenant}` and `PUT /stream-config/{tenant}`: validated, versioned (ETag / If-Match),
//! stored in the configuration log that every instance replays.

use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use producer::config_log::{ConfigRecord, Refusal, Verdict, VersionedConfig};
use producer::topics::TopicSpec;
use schemas::{FieldError, StreamConfig, TenantId};
use serde_json::Value;
use std::time::Duration;

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn render(tenant: &TenantId, vc: &VersionedConfig) -> Response {
    let mut doc = serde_json::to_value(&*vc.config).unwrap_or(Value::Null);
    if let Some(o) = doc.as_object_mut() {
        o.insert("tenantId".into(), Value::String(tenant.to_string()));
        o.insert("version".into(), vc.version.into());
        o.insert("updatedAt".into(), vc.updated_at.clone().map_or(Value::Null, Value::String));
    }
    let mut res = Json(doc).into_response();
    res.headers_mut().insert(header::ETAG, etag(vc.version));
    res
}

pub async fn get_config(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let vc = state
        .pipeline
        .configs()
        .stream_config(&t)
        .ok_or_else(|| ApiError::not_found("unknown_tenant", "tenant is not registered"))?;
    Ok(render(&t, &vc))
}

/// `If-Match: "3"` (or `W/"3"`, or `*`). `None` when absent or `*`.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_start_matches("W/").trim_matches('"').parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request("invalid_if_match", "If-Match must be the ETag of GET /stream-config, e.g. \"3\"")
            .with_errors(vec![FieldError::new("If-Match", "invalid_value", "an ETag such as \"3\"")])
    })
}

fn conflict(current: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "version_conflict",
        "Version conflict",
        format!("the configuration is at version {current}; GET it, merge, and PUT with If-Match: \"{current}\""),
    )
}

pub async fn put_config(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let expected = if_match(&headers)?;
    let doc =
        body::json_document(&headers, body, state.cfg.max_body_bytes, Duration::from_millis(state.cfg.body_timeout_ms))
            .await?;
    let cfg = StreamConfig::from_json(doc, &t).map_err(|errors| {
        let mut e = ApiError::invalid(errors);
        e.code = "invalid_config";
        e.title = "Invalid stream configuration";
        e
    })?;
    let configs = state.pipeline.configs();
    let current_cfg = configs.stream_config(&t);
    let current = current_cfg.as_ref().map_or(0, |c| c.version);
    // A tenant may not raise its own quota: only the admin key sets it.
    let current_quota = current_cfg.as_ref().and_then(|c| c.config.quota.clone());
    let is_admin = auth.require_admin().is_ok();
    let mut cfg = cfg;
    if !is_admin && cfg.quota.is_none() {
        // A tenant's document that leaves `quota` out keeps the quota the admin set.
        cfg.quota = current_quota.clone();
    }
    if cfg.quota != current_quota && !is_admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            "Forbidden",
            "only the admin key may set `quota`",
        )
        .with_errors(vec![FieldError::new("quota", "admin_required", "only the admin key may set the quota")]));
    }
    if let Some(v) = expected {
        if v != current {
            return Err(conflict(current));
        }
    }
    if !cfg.topics.is_empty() {
        let specs: Vec<TopicSpec> = cfg
            .topics
            .iter()
            .map(|n| TopicSpec {
                name: n.to_string(),
                partitions: state.cfg.partitions,
                replication: state.cfg.replication,
                compacted: false,
            })
            .collect();
        state.topics.ensure(&specs).await.map_err(|e| {
            tracing::warn!(error = %e, "creating tenant topics failed");
            ApiError::unavailable(
                "broker_unavailable",
                "the tenant's topics could not be created; nothing was changed, retry later",
                2,
            )
        })?;
    }
    let updated_at = producer::now_rfc3339();
    let rec = ConfigRecord::StreamConfig { tenant: t.clone(), version: current + 1, config: cfg, updated_at };
    match configs.propose(&rec).await {
        Ok(Verdict::Applied) => {}
        Ok(Verdict::Refused(Refusal::VersionConflict { current })) => return Err(conflict(current)),
        Ok(Verdict::Refused(Refusal::TopicOwned { topic, .. })) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "topic_taken",
                "Topic taken",
                format!("topic `{topic}` belongs to another tenant"),
            )
            .with_errors(vec![FieldError::new(
                "topics",
                "topic_taken",
                format!("`{topic}` belongs to another tenant"),
            )]))
        }
        Ok(Verdict::Refused(r)) => {
            return Err({
                tracing::warn!(refusal = ?r, "config write refused");
                ApiError::new(
                    StatusCode::CONFLICT,
                    "refused",
                    "Refused",
                    "the configuration log refused the change; retry",
                )
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "config write failed");
            return Err(ApiError::unavailable(
                "broker_unavailable",
                "the configuration could not be stored; retry later",
                2,
            ));
        }
    }
    let vc =
        configs.stream_config(&t).ok_or_else(|| ApiError::not_found("unknown_tenant", "tenant is not registered"))?;
    Ok(render(&t, &vc))
}
