//! Alert policies of a tenant: `GET /tenants/{tenant}/policies`, `GET|PUT|DELETE /tenants/{tenant}/policies/{id}`,
//! and `POST /tenants/{tenant}/policies/{id}/test`, which evaluates a sample event and shows which rules matched
//! and what would be sent. Policies are stored in the configuration log like stream configs: durable, versioned
//! (ETag / If-Match), seen by every instance.

use super::stream_config::OffsetDateTimeExt;
use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use producer::config_log::{ConfigRecord, Refusal, Verdict, VersionedPolicy};
use schemas::policy::{render, valid_id, with_id, AlertPolicy, CompiledPolicy};
use schemas::{FieldError, TenantId};
use serde_json::{json, Value};
use std::time::Duration;

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn policy_id(id: &str) -> Result<String, ApiError> {
    if valid_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad_request("invalid_id", "policy ids are 1-64 of a-z, 0-9 and -")
            .with_errors(vec![FieldError::new("id", "invalid_id", "1-64 of a-z, 0-9 and -")]))
    }
}

fn document(id: &str, p: &VersionedPolicy) -> Option<Value> {
    let mut m = with_id(id, p.policy.as_ref()?);
    m.insert("version".into(), p.version.into());
    m.insert("updatedAt".into(), Value::String(p.updated_at.clone()));
    Some(Value::Object(m))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("unknown_policy", format!("no policy `{id}`"))
}

fn live(state: &AppState, t: &TenantId, id: &str) -> Result<VersionedPolicy, ApiError> {
    state.pipeline.configs().policy(t, id).filter(|p| p.policy.is_some()).ok_or_else(|| not_found(id))
}

pub async fn list(State(state): State<AppState>, auth: Auth, Path(tenant): Path<String>) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let items: Vec<Value> =
        state.pipeline.configs().policies(&t).iter().filter_map(|(id, p)| document(id, p)).collect();
    Ok(Json(json!({"tenantId": t, "policies": items})).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = policy_id(&id)?;
    let p = live(&state, &t, &id)?;
    let mut res = Json(document(&id, &p)).into_response();
    res.headers_mut().insert(header::ETAG, etag(p.version));
    Ok(res)
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_matches('"').parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request("invalid_if_match", "If-Match must be an ETag such as \"3\"")
            .with_errors(vec![FieldError::new("If-Match", "invalid_value", "an ETag such as \"3\"")])
    })
}

async fn write(
    state: &AppState,
    t: &TenantId,
    id: &str,
    expected: Option<u64>,
    policy: Option<AlertPolicy>,
) -> Result<u64, ApiError> {
    let configs = state.pipeline.configs();
    let current = configs.policy(t, id).map_or(0, |p| p.version);
    if let Some(v) = expected {
        if v != current {
            return Err(conflict(current));
        }
    }
    let rec = ConfigRecord::Policy {
        tenant: t.clone(),
        id: id.to_string(),
        version: current + 1,
        policy,
        updated_at: OffsetDateTimeExt::now_rfc3339(),
    };
    match configs.propose(&rec).await {
        Ok(Verdict::Applied) => Ok(current + 1),
        Ok(Verdict::Refused(Refusal::VersionConflict { current })) => Err(conflict(current)),
        Ok(Verdict::Refused(r)) => {
            tracing::warn!(refusal = ?r, "policy write refused");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "refused",
                "Refused",
                "the configuration log refused the change; retry",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "policy write failed");
            Err(ApiError::unavailable("broker_unavailable", "the policy could not be stored; retry later", 2))
        }
    }
}

fn conflict(current: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "version_conflict",
        "Version conflict",
        format!("the policy is at version {current}; GET it, merge, and PUT with If-Match: \"{current}\""),
    )
}

fn parse_policy(doc: Value) -> Result<AlertPolicy, ApiError> {
    let mut doc = doc;
    if let Some(o) = doc.as_object_mut() {
        // Read-back documents carry these; they are not part of the policy.
        for k in ["id", "version", "updatedAt"] {
            o.remove(k);
        }
    }
    AlertPolicy::from_json(doc).map_err(|errors| {
        let mut e = ApiError::invalid(errors);
        e.code = "invalid_policy";
        e.title = "Invalid policy";
        e
    })
}

/// `PUT /tenants/{tenant}/policies/{id}`: creates (201) or replaces (200) the policy.
pub async fn put(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = policy_id(&id)?;
    let expected = if_match(&headers)?;
    let doc =
        body::json_document(&headers, body, state.cfg.max_body_bytes, Duration::from_millis(state.cfg.body_timeout_ms))
            .await?;
    let policy = parse_policy(doc)?;
    let existed = state.pipeline.configs().policy(&t, &id).is_some_and(|p| p.policy.is_some());
    let version = write(&state, &t, &id, expected, Some(policy)).await?;
    let p = live(&state, &t, &id)?;
    let mut res = (if existed { StatusCode::OK } else { StatusCode::CREATED }, Json(document(&id, &p))).into_response();
    res.headers_mut().insert(header::ETAG, etag(version));
    Ok(res)
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = policy_id(&id)?;
    live(&state, &t, &id)?;
    write(&state, &t, &id, if_match(&headers)?, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /tenants/{tenant}/policies/{id}/test` with a sample event: which rules matched, and the alert that would
/// be raised (severity, summary, message, group key, receivers). Nothing is sent.
pub async fn test(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = policy_id(&id)?;
    let p = live(&state, &t, &id)?;
    let event =
        body::json_document(&headers, body, state.cfg.max_body_bytes, Duration::from_millis(state.cfg.body_timeout_ms))
            .await?;
    if !event.is_object() {
        return Err(ApiError::invalid(vec![FieldError::wrong_type("", "a JSON object (an event)")]));
    }
    let Some(policy) = p.policy else { return Err(not_found(&id)) };
    let compiled = CompiledPolicy::compile(&id, policy).map_err(ApiError::invalid)?;
    let (matched, rules) = compiled.trace(&event);
    let pol = &compiled.policy;
    let alert = matched.then(|| {
        json!({
            "severity": pol.severity,
            "summary": pol.summary_template.as_deref().map_or_else(|| pol.name.clone(), |tpl| render(tpl, &event)),
            "message": pol.message_template.as_deref().map(|tpl| render(tpl, &event)),
            "groupKey": compiled.group_key(&event),
            "receivers": pol.receivers,
        })
    });
    Ok(Json(json!({"policyId": id, "matched": matched, "rules": rules, "alert": alert})).into_response())
}
