//! A tenant's alerts: `GET /tenants/{tenant}/alerts?status&severity&policy&limit`, `GET .../alerts/{id}` (with
//! its history of transitions and delivery attempts), `POST .../alerts/{id}/acknowledge` and `.../resolve`.
//! Acknowledge and resolve are published on the alerts topic; the alert stream forwards them to PagerDuty.

use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use producer::alerts::{AlertStatus, AlertStore};
use schemas::FieldError;
use serde_json::json;
use std::collections::HashMap;

fn unavailable() -> ApiError {
    ApiError::unavailable("redis_unavailable", "the alert store is unavailable; retry later", 2)
}

fn alert_id(id: &str) -> Result<&str, ApiError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(id)
    } else {
        Err(ApiError::bad_request("invalid_id", "alert ids are hexadecimal").with_errors(vec![FieldError::new(
            "id",
            "invalid_id",
            "hexadecimal",
        )]))
    }
}

pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let limit = match q.get("limit").map(|s| s.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        _ => {
            return Err(ApiError::bad_request("invalid_query", "limit must be 1..=1000")
                .with_errors(vec![FieldError::new("limit", "out_of_range", "1..=1000")]))
        }
    };
    let bad = |f: &str, allowed: &str| {
        ApiError::bad_request("invalid_query", format!("{f} must be one of {allowed}"))
            .with_errors(vec![FieldError::new(f, "invalid_value", allowed.to_string())])
    };
    if q.get("status").is_some_and(|s| !matches!(s.as_str(), "active" | "acknowledged" | "resolved" | "suppressed")) {
        return Err(bad("status", "active, acknowledged, resolved, suppressed"));
    }
    if q.get("severity").is_some_and(|s| !matches!(s.as_str(), "info" | "low" | "medium" | "high" | "critical")) {
        return Err(bad("severity", "info, low, medium, high, critical"));
    }
    let all = state.alerts.list(t.as_str(), 1000).await.map_err(|_| unavailable())?;
    let mut alerts = AlertStore::filter(all, &q);
    alerts.truncate(limit);
    Ok(Json(json!({"tenantId": t, "count": alerts.len(), "alerts": alerts})).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = alert_id(&id)?;
    let a = state
        .alerts
        .get(t.as_str(), id)
        .await
        .map_err(|_| unavailable())?
        .ok_or_else(|| ApiError::not_found("not_found", "no such alert"))?;
    let history = state.alerts.history(t.as_str(), id).await.map_err(|_| unavailable())?;
    let mut v = serde_json::to_value(&a).unwrap_or_default();
    v["history"] = serde_json::to_value(history).unwrap_or_default();
    Ok(Json(v).into_response())
}

async fn transition(
    state: &AppState,
    auth: &Auth,
    tenant: &str,
    id: &str,
    to: AlertStatus,
) -> Result<Response, ApiError> {
    let t = auth.tenant(state, tenant)?;
    let id = alert_id(id)?;
    let a = state
        .alerts
        .transition(t.as_str(), id, to)
        .await
        .map_err(|_| unavailable())?
        .ok_or_else(|| ApiError::not_found("not_found", "no such alert"))?;
    Ok(Json(a).into_response())
}

pub async fn acknowledge(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    transition(&state, &auth, &tenant, &id, AlertStatus::Acknowledged).await
}

pub async fn resolve(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    transition(&state, &auth, &tenant, &id, AlertStatus::Resolved).await
}
