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

/// Deserialises a document, turning serde's error into a [`FieldError`] naming the path (`filters[0].eventTypes[1]`).
/// `root` names the field reported when the document as a whole is wrong (e.g. `type` for a tagged enum).
pub fn deserialize<T: serde::de::DeserializeOwned>(v: serde_json::Value, root: &str) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { root.to_string() } else { path };
        let msg = e.inner().to_string();
        let code = if msg.starts_with("unknown field") {
            "unknown_field"
        } else if msg.starts_with("invalid type") {
            "wrong_type"
        } else {
            "invalid_value"
        };
        vec![FieldError::new(field, code, msg)]
    })
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
