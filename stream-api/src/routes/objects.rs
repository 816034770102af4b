//! Tenant-owned objects stored in the configuration log — alert policies and receivers — with one set of
//! handlers: list, get (ETag), put (create 201 / replace 200, If-Match), delete (204). Each kind says how a
//! document is validated and how it is shown (receivers mask their secrets).

use super::stream_config::if_match;
use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use producer::config_log::{ConfigRecord, ObjectKind, Refusal, Verdict, VersionedObject};
use schemas::policy::{valid_id, AlertPolicy, InhibitRule, Silence};
use schemas::receiver::Receiver;
use schemas::{FieldError, TenantId};
use serde_json::{json, Value};
use std::time::Duration;

/// What differs between kinds of objects.
pub trait Kind: Send + Sync + 'static {
    const KIND: ObjectKind;
    /// Plural name used in answers (`policies`, `receivers`).
    const PLURAL: &'static str;
    /// Checks a document; returns the body to store.
    fn validate(doc: Value) -> Result<Value, ApiError>;
    /// The stored body as an API answer shows it.
    fn show(body: &Value) -> Value;
}

pub struct Policies;
pub struct Receivers;
pub struct Silences;
pub struct InhibitRules;

impl Kind for Silences {
    const KIND: ObjectKind = ObjectKind::Silence;
    const PLURAL: &'static str = "silences";
    fn validate(doc: Value) -> Result<Value, ApiError> {
        let s = Silence::from_json(doc).map_err(|e| invalid("invalid_silence", "Invalid silence", e))?;
        Ok(serde_json::to_value(s).unwrap_or(Value::Null))
    }
    fn show(body: &Value) -> Value {
        body.clone()
    }
}

impl Kind for InhibitRules {
    const KIND: ObjectKind = ObjectKind::InhibitRule;
    const PLURAL: &'static str = "inhibitRules";
    fn validate(doc: Value) -> Result<Value, ApiError> {
        let r =
            InhibitRule::from_json(doc).map_err(|e| invalid("invalid_inhibit_rule", "Invalid inhibition rule", e))?;
        Ok(serde_json::to_value(r).unwrap_or(Value::Null))
    }
    fn show(body: &Value) -> Value {
        body.clone()
    }
}

fn invalid(code: &'static str, title: &'static str, errors: Vec<FieldError>) -> ApiError {
    let mut e = ApiError::invalid(errors);
    e.code = code;
    e.title = title;
    e
}

impl Kind for Policies {
    const KIND: ObjectKind = ObjectKind::Policy;
    const PLURAL: &'static str = "policies";
    fn validate(doc: Value) -> Result<Value, ApiError> {
        let p = AlertPolicy::from_json(doc).map_err(|e| invalid("invalid_policy", "Invalid policy", e))?;
        Ok(serde_json::to_value(p).unwrap_or(Value::Null))
    }
    fn show(body: &Value) -> Value {
        body.clone()
    }
}

impl Kind for Receivers {
    const KIND: ObjectKind = ObjectKind::Receiver;
    const PLURAL: &'static str = "receivers";
    fn validate(doc: Value) -> Result<Value, ApiError> {
        let r = Receiver::from_json(doc).map_err(|e| invalid("invalid_receiver", "Invalid receiver", e))?;
        Ok(serde_json::to_value(r).unwrap_or(Value::Null))
    }
    fn show(body: &Value) -> Value {
        serde_json::from_value::<Receiver>(body.clone()).map_or(Value::Null, |r| r.masked())
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

pub fn object_id(id: &str) -> Result<String, ApiError> {
    if valid_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::bad_request("invalid_id", "ids are 1-64 of a-z, 0-9 and -").with_errors(vec![FieldError::new(
            "id",
            "invalid_id",
            "1-64 of a-z, 0-9 and -",
        )]))
    }
}

fn document<K: Kind>(id: &str, o: &VersionedObject) -> Option<Value> {
    let mut v = K::show(o.body.as_ref()?);
    let m = v.as_object_mut()?;
    m.insert("id".into(), Value::String(id.to_string()));
    m.insert("version".into(), o.version.into());
    m.insert("updatedAt".into(), Value::String(o.updated_at.clone()));
    Some(v)
}

/// The live object (not deleted), or 404.
pub fn live<K: Kind>(state: &AppState, t: &TenantId, id: &str) -> Result<VersionedObject, ApiError> {
    state
        .pipeline
        .configs()
        .object(t, K::KIND, id)
        .filter(|o| o.body.is_some())
        .ok_or_else(|| ApiError::not_found("not_found", format!("no {} `{id}`", K::KIND.as_str())))
}

pub async fn list<K: Kind>(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let items: Vec<Value> =
        state.pipeline.configs().objects(&t, K::KIND).iter().filter_map(|(id, o)| document::<K>(id, o)).collect();
    Ok(Json(json!({"tenantId": t, K::PLURAL: items})).into_response())
}

pub async fn get_one<K: Kind>(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = object_id(&id)?;
    let o = live::<K>(&state, &t, &id)?;
    let mut res = Json(document::<K>(&id, &o)).into_response();
    res.headers_mut().insert(header::ETAG, etag(o.version));
    Ok(res)
}

fn conflict(current: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "version_conflict",
        "Version conflict",
        format!("the object is at version {current}; GET it, merge, and PUT with If-Match: \"{current}\""),
    )
}

pub(crate) async fn write<K: Kind>(
    state: &AppState,
    t: &TenantId,
    id: &str,
    expected: Option<u64>,
    body: Option<Value>,
) -> Result<u64, ApiError> {
    let configs = state.pipeline.configs();
    let current = configs.object(t, K::KIND, id).map_or(0, |o| o.version);
    if expected.is_some_and(|v| v != current) {
        return Err(conflict(current));
    }
    let rec = ConfigRecord::Object {
        tenant: t.clone(),
        kind: K::KIND,
        id: id.to_string(),
        version: current + 1,
        body,
        updated_at: producer::now_rfc3339(),
    };
    match configs.propose(&rec).await {
        Ok(Verdict::Applied) => Ok(current + 1),
        Ok(Verdict::Refused(Refusal::VersionConflict { current })) => Err(conflict(current)),
        Ok(Verdict::Refused(r)) => {
            tracing::warn!(refusal = ?r, "object write refused");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "refused",
                "Refused",
                "the configuration log refused the change; retry",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "object write failed");
            Err(ApiError::unavailable("broker_unavailable", "the change could not be stored; retry later", 2))
        }
    }
}

/// Creates (201) or replaces (200). A read-back document can be sent again as it is, except that a receiver's
/// masked secrets must be given in clear again.
pub async fn put<K: Kind>(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = object_id(&id)?;
    let expected = if_match(&headers)?;
    let mut doc =
        body::json_document(&headers, body, state.cfg.max_body_bytes, Duration::from_millis(state.cfg.body_timeout_ms))
            .await?;
    if let Some(o) = doc.as_object_mut() {
        for k in ["id", "version", "updatedAt"] {
            o.remove(k);
        }
    }
    let stored = K::validate(doc)?;
    let existed = state.pipeline.configs().object(&t, K::KIND, &id).is_some_and(|o| o.body.is_some());
    let version = write::<K>(&state, &t, &id, expected, Some(stored)).await?;
    let o = live::<K>(&state, &t, &id)?;
    let mut res =
        (if existed { StatusCode::OK } else { StatusCode::CREATED }, Json(document::<K>(&id, &o))).into_response();
    res.headers_mut().insert(header::ETAG, etag(version));
    Ok(res)
}

pub async fn delete<K: Kind>(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = auth.tenant(&state, &tenant)?;
    let id = object_id(&id)?;
    live::<K>(&state, &t, &id)?;
    write::<K>(&state, &t, &id, if_match(&headers)?, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
