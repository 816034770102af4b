//! `ApiError`: every error the API returns, rendered as `application/problem+json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use producer::IngestError;
use schemas::FieldError;
use serde_json::{json, Map, Value};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document, boxed so that `Result<_, ApiError>` stays small on the happy path.
#[derive(Debug)]
pub struct ApiError(Box<Problem>);

impl std::ops::Deref for ApiError {
    type Target = Problem;
    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Problem {
        &mut self.0
    }
}

/// The members of a problem document. `code` is stable and machine-readable; `detail` is for people.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after_secs: Option<u64>,
    /// Extra members of the problem document (e.g. per-item results of a bulk request).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(Problem {
            status,
            code,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
            extra: Map::new(),
        }))
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => one.to_string(),
            many => format!("{} fields are invalid; see `errors`", many.len()),
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", "Invalid event", detail).with_errors(errors)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", "send `Authorization: Bearer <api key>`")
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden_tenant", "Forbidden", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not found", detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, "Service unavailable", detail);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// An internal failure: logged here, and the client learns nothing internal.
    pub fn internal(err: &dyn std::error::Error) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "the request could not be completed")
    }

    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": format!("https://evstream.dev/problems/{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let Some(obj) = v.as_object_mut() {
            if !self.errors.is_empty() {
                obj.insert("errors".into(), serde_json::to_value(&self.errors).unwrap_or(Value::Null));
            }
            for (k, val) in &self.extra {
                obj.insert(k.clone(), val.clone());
            }
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after_secs {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let code = e.code();
        match e {
            IngestError::Invalid { errors } => ApiError::invalid(errors),
            IngestError::Forbidden { .. } => ApiError::forbidden(e.to_string()),
            IngestError::UnknownTenant { ref tenant } => {
                let f = FieldError::new(
                    "tenantId",
                    "unknown_tenant",
                    format!("tenant `{tenant}` is not registered (POST /tenants)"),
                );
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_tenant", "Unknown tenant", e.to_string())
                    .with_errors(vec![f])
            }
            IngestError::TenantDisabled { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "tenant_disabled", "Tenant disabled", e.to_string())
            }
            IngestError::SourceNotAllowed { .. } => {
                let f = FieldError::new("source", "source_not_allowed", e.to_string());
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "source_not_allowed",
                    "Source not allowed",
                    e.to_string(),
                )
                .with_errors(vec![f])
            }
            IngestError::QuotaExceeded { reason: "quota_request_too_large", .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_request_too_large",
                "Request larger than the quota",
                "this request needs more than the tenant's whole burst allowance; split it",
            ),
            IngestError::QuotaExceeded { retry_after, reason, .. } => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    reason,
                    "Quota exceeded",
                    "the tenant is over its ingest quota; retry after the time in Retry-After",
                );
                e.retry_after_secs = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
                e
            }
            IngestError::InFlight => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "duplicate_in_flight",
                    "Duplicate in flight",
                    "an event with the same id is still being written; retry shortly",
                );
                e.retry_after_secs = Some(1);
                e
            }
            IngestError::Unavailable(_) => ApiError::unavailable(
                "broker_unavailable",
                "the broker did not acknowledge the event in time; nothing was stored, retry later",
                2,
            ),
            IngestError::Undeliverable(_) if code == "message_too_large" => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_large",
                "Event too large",
                "the broker refused the event as too large",
            ),
            IngestError::Undeliverable(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, "Event not deliverable", e.to_string())
            }
        }
    }
}
