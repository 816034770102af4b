//! Tenants and their API keys (admin key only, except that a tenant may read itself).

use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use producer::config_log::{ConfigRecord, Principal, Refusal, Verdict};
use rand::RngCore;
use schemas::{FieldError, TenantId};
use serde_json::{json, Value};
use std::time::Duration;

fn store_error(e: &dyn std::error::Error) -> ApiError {
    tracing::warn!(error = %e, "config write failed");
    ApiError::unavailable("broker_unavailable", "the change could not be stored; retry later", 2)
}

/// `POST /tenants {"id": "acme", "name": "Acme Corp"}` -> 201.
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth.require_admin()?;
    let doc = body::json_document(&headers, body, 64 * 1024, Duration::from_millis(state.cfg.body_timeout_ms)).await?;
    let mut errs = Vec::new();
    let id = match doc.get("id") {
        Some(Value::String(s)) => TenantId::new(s.as_str())
            .map_err(|e| errs.push(FieldError::new("id", "invalid_tenant", e.to_string())))
            .ok(),
        Some(_) => {
            errs.push(FieldError::wrong_type("id", "a string"));
            None
        }
        None => {
            errs.push(FieldError::missing("id"));
            None
        }
    };
    let name = match doc.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 200 && !s.chars().any(char::is_control) => Some(s.clone()),
        Some(_) => {
            errs.push(FieldError::new("name", "invalid_value", "name must be a string of at most 200 bytes"));
            None
        }
    };
    if let Some(o) = doc.as_object() {
        for k in o.keys().filter(|k| *k != "id" && *k != "name") {
            errs.push(FieldError::new(k.chars().take(64).collect::<String>(), "unknown_field", "unknown field"));
        }
    } else {
        errs.push(FieldError::wrong_type("", "a JSON object"));
    }
    let Some(id) = id.filter(|_| errs.is_empty()) else {
        let mut e = ApiError::invalid(errs);
        e.code = "invalid_tenant";
        e.title = "Invalid tenant";
        return Err(e);
    };
    let rec = ConfigRecord::Tenant {
        tenant: id.clone(),
        name: name.unwrap_or_else(|| id.to_string()),
        created_at: producer::now_rfc3339(),
    };
    match state.pipeline.configs().propose(&rec).await.map_err(|e| store_error(&e))? {
        Verdict::Applied => {}
        Verdict::Refused(Refusal::TenantExists) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "tenant_exists",
                "Tenant exists",
                format!("tenant `{id}` already exists"),
            ))
        }
        Verdict::Refused(r) => {
            tracing::warn!(refusal = ?r, "tenant write refused");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "refused",
                "Refused",
                "the configuration log refused the change; retry",
            ));
        }
    }
    let t = state.pipeline.configs().tenant(&id);
    Ok((StatusCode::CREATED, Json(json!(t))).into_response())
}

pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Response, ApiError> {
    let tenants = match &auth.0 {
        Principal::Admin => state.pipeline.configs().tenants(),
        Principal::Tenant { tenant, .. } => state.pipeline.configs().tenant(tenant).into_iter().collect(),
    };
    Ok(Json(json!({"tenants": tenants})).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    Ok(Json(json!(state.pipeline.configs().tenant(&t))).into_response())
}

/// `POST /tenants/{tenant}/keys` -> 201 `{"keyId", "key", "tenantId"}`. The key is shown this once; only its
/// hash is stored.
pub async fn create_key(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    auth.require_admin()?;
    let t = auth.tenant(&state, &tenant)?;
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let mut id = [0u8; 6];
    rand::rng().fill_bytes(&mut id);
    let key_id = format!("k_{}", hex::encode(id));
    let key = format!("evs_{}", hex::encode(secret));
    let rec = ConfigRecord::ApiKey {
        key_id: key_id.clone(),
        tenant: t.clone(),
        hash: producer::config_log::hash_key(&key),
        created_at: producer::now_rfc3339(),
    };
    match state.pipeline.configs().propose(&rec).await.map_err(|e| store_error(&e))? {
        Verdict::Applied => {
            Ok((StatusCode::CREATED, Json(json!({"keyId": key_id, "tenantId": t, "key": key}))).into_response())
        }
        Verdict::Refused(_) => Err(ApiError::not_found("unknown_tenant", "tenant is not registered")),
    }
}
