//! Request bodies: read under a byte limit and a time limit, and parsed into our error shape (never axum's
//! plain-text rejections).

use crate::error::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use std::time::Duration;

/// Reads the whole body, refusing more than `max_bytes` (413) or a sender slower than `timeout` (408).
pub async fn read(body: Body, max_bytes: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, max_bytes);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Request timeout",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(max_bytes)),
        Ok(Err(_)) => Err(ApiError::bad_request("body_unreadable", "the request body could not be read")),
    }
}

pub fn too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "Body too large",
        format!("the body exceeds {max_bytes} bytes"),
    )
}

/// Parses JSON; syntax errors, truncation, invalid UTF-8 and excessive nesting are all 400 `malformed_json`.
pub fn json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(malformed)
}

/// The problem for a body that is not JSON, saying where.
pub fn malformed(e: serde_json::Error) -> ApiError {
    let detail = if e.line() > 0 {
        format!("the body is not valid JSON: {} (line {}, column {})", kind(&e), e.line(), e.column())
    } else {
        format!("the body is not valid JSON: {}", kind(&e))
    };
    ApiError::bad_request("malformed_json", detail)
}

fn kind(e: &serde_json::Error) -> String {
    // serde_json's message already carries line/column; keep only the first clause, which echoes no input.
    let s = e.to_string();
    s.split(" at line ").next().unwrap_or("syntax error").to_string()
}

/// The media type of the request without parameters, lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

pub fn is_json(mt: &str) -> bool {
    mt == "application/json"
        || (mt.starts_with("application/") && mt.ends_with("+json") && mt != "application/cloudevents+json")
}

pub fn unsupported_media_type(accepted: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Unsupported media type",
        format!("send Content-Type: {accepted}"),
    )
}

/// Reads and parses a JSON document (config, tenant) with the `max_body_bytes` limit.
pub async fn json_document(
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Value, ApiError> {
    if !media_type(headers).as_deref().is_some_and(is_json) {
        return Err(unsupported_media_type("application/json"));
    }
    let bytes = read(body, max_bytes, timeout).await?;
    json(&bytes)
}
