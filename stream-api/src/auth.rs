//! Bearer API keys. The admin key manages tenants and keys and may act for any tenant; a tenant key reads and
//! writes only its own tenant. Keys are looked up by their SHA-256 hash; the clear key is never stored.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use producer::config_log::Principal;
use producer::Scope;
use schemas::TenantId;

/// The authenticated caller. Extracting it answers 401 when the key is missing or unknown.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(ApiError::unauthorized)?;
        state.pipeline.configs().authenticate(key).map(Auth).ok_or_else(ApiError::unauthorized)
    }
}

impl Auth {
    pub fn scope(&self) -> Scope {
        match &self.0 {
            Principal::Admin => Scope::Admin,
            Principal::Tenant { tenant, .. } => Scope::Tenant(tenant.clone()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.0 {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "admin_required",
                "Forbidden",
                "this operation needs the admin key",
            )),
        }
    }

    /// Checks that the caller may act for `tenant` (given as a path segment), and that the tenant exists.
    pub fn tenant(&self, state: &AppState, tenant: &str) -> Result<TenantId, ApiError> {
        let t = TenantId::new(tenant).map_err(|e| {
            ApiError::bad_request("invalid_tenant", e.to_string()).with_errors(vec![schemas::FieldError::new(
                "tenant",
                "invalid_tenant",
                e.to_string(),
            )])
        })?;
        if let Principal::Tenant { tenant: own, .. } = &self.0 {
            if *own != t {
                return Err(ApiError::forbidden(format!("this key may not access tenant {t}")));
            }
        }
        if state.pipeline.configs().tenant(&t).is_none() {
            return Err(ApiError::not_found("unknown_tenant", format!("tenant `{t}` is not registered")));
        }
        Ok(t)
    }
}
