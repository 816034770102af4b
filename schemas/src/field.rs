//! The one shape of a validation failure: which field, a stable code, and a human message.

use serde::Serialize;

/// One thing wrong with one field of a request. `field` is a dot path (`data.riskScore`, `filters[0].sources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self { field: field.into(), code, message: message.into() }
    }

    pub fn missing(field: &str) -> Self {
        Self::new(field, "missing_field", format!("`{field}` is required"))
    }

    pub fn wrong_type(field: &str, expected: &str) -> Self {
        Self::new(field, "wrong_type", format!("`{field}` must be {expected}"))
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
