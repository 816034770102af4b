//! `POST /tenants/{tenant}/policies/{id}/test`: evaluates a sample event against a stored policy and shows which
//! rules matched and the alert that would be raised. (Policy CRUD is in [`super::objects`].)

use super::objects::{live, object_id, Policies};
use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemas::policy::{render, AlertPolicy, CompiledPolicy};
use schemas::FieldError;
use serde_json::json;
use std::time::Duration;

pub async fn test(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = object_id(&id)?;
    let stored = live::<Policies>(&state, &t, &id)?;
    let event =
        body::json_document(&headers, body, state.cfg.max_body_bytes, Duration::from_millis(state.cfg.body_timeout_ms))
            .await?;
    if !event.is_object() {
        return Err(ApiError::invalid(vec![FieldError::wrong_type("", "a JSON object (an event)")]));
    }
    let policy = stored
        .body
        .map(AlertPolicy::from_json)
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::not_found("not_found", "no such policy"))?;
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
