//! `POST /tenants/{tenant}/policies/{id}/test`: evaluates a sample event against a stored policy and shows which
//! rules matched and the alert that would be raised. `GET /policy-packs` and
//! `POST /tenants/{tenant}/policy-packs/{pack}`: built-in sets of policies a tenant can enable. (Policy CRUD is in
//! [`super::objects`].)

use super::objects::{live, object_id, write, Kind, Policies};
use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemas::policy::{AlertPolicy, CompiledPolicy};
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
            "summary": compiled.summary(&event),
            "message": compiled.message(&event),
            "groupKey": compiled.group_key(&event),
            "receivers": pol.receivers,
        })
    });
    Ok(Json(json!({"policyId": id, "matched": matched, "rules": rules, "alert": alert})).into_response())
}

/// `GET /policy-packs`: the built-in packs and their policies.
pub async fn list_packs() -> Response {
    let packs: Vec<serde_json::Value> = schemas::policy::packs()
        .into_iter()
        .map(|(name, ps)| json!({"pack": name, "policies": ps.into_iter().map(|(id, doc)| json!({"id": id, "policy": doc})).collect::<Vec<_>>()}))
        .collect();
    Json(json!({"packs": packs})).into_response()
}

/// `POST /tenants/{tenant}/policy-packs/{pack}` with `{"receivers": [...]}`: stores the pack's policies (ids
/// `pack-...`) for the tenant, replacing earlier versions of them.
pub async fn enable_pack(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, pack)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let Some((_, policies)) = schemas::policy::packs().into_iter().find(|(n, _)| *n == pack) else {
        return Err(ApiError::not_found("unknown_pack", "no such policy pack (GET /policy-packs lists them)"));
    };
    let doc = body::json_document(&headers, body, 64 * 1024, Duration::from_millis(state.cfg.body_timeout_ms)).await?;
    let receivers = match doc.get("receivers") {
        None => json!([]),
        Some(r @ serde_json::Value::Array(_)) => r.clone(),
        Some(_) => return Err(ApiError::invalid(vec![FieldError::wrong_type("receivers", "a list of receiver ids")])),
    };
    let mut enabled = Vec::new();
    for (id, mut policy) in policies {
        policy["receivers"] = receivers.clone();
        let stored = Policies::validate(policy)?;
        write::<Policies>(&state, &t, id, None, Some(stored)).await?;
        enabled.push(id);
    }
    Ok(Json(json!({"pack": pack, "policies": enabled})).into_response())
}
