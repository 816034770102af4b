//! The event-type catalog: every type evstream knows, its category, the JSON Schema of its `data`
//! (`schemas/json/events/<TYPE>.json`), and the sources every tenant may use without configuring them.

use crate::field::FieldError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! event_types {
    ($($variant:ident => $category:literal),+ $(,)?) => {
        /// An event type from the catalog. Serialised as its upper-case name (`RISK_CREATED`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum EventType { $($variant),+ }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => stringify!($variant)),+ }
            }

            /// The family the type belongs to (`risk`, `control`, `cloud`, ...).
            pub fn category(self) -> &'static str {
                match self { $(EventType::$variant => $category),+ }
            }

            fn schema_text(self) -> &'static str {
                match self { $(EventType::$variant => include_str!(concat!("../json/events/", stringify!($variant), ".json"))),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $(stringify!($variant) => Some(EventType::$variant),)+ _ => None }
            }
        }
    };
}

event_types! {
    RISK_CREATED => "risk",
    RISK_UPDATED => "risk",
    RISK_STATUS_CHANGED => "risk",
    RISK_DELETED => "risk",
    CONTROL_CREATED => "control",
    CONTROL_UPDATED => "control",
    CONTROL_TESTED => "control",
    CONTROL_FAILED => "control",
    ASSESSMENT_STARTED => "assessment",
    ASSESSMENT_COMPLETED => "assessment",
    ASSESSMENT_OVERDUE => "assessment",
    COMPLIANCE_GAP_DETECTED => "compliance",
    COMPLIANCE_STATUS_CHANGED => "compliance",
    POLICY_VIOLATION => "compliance",
    SYSTEM_ERROR => "system",
    SYSTEM_PERFORMANCE => "system",
    DATA_ANOMALY => "system",
    USER_ACTION => "user",
    CLOUD_ALERT => "cloud",
    CLOUD_OUTAGE => "cloud",
    RESOURCE_METRIC => "cloud",
    SECURITY_EVENT => "security",
    AUDIT_EVENT => "audit",
    DATA_CHANGE => "data",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EventType::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown event type `{s}`")))
    }
}

/// Sources every tenant may use; others must be listed in the tenant's `allowedSources`.
pub const KNOWN_SOURCES: &[&str] = &[
    "FRONTEND_APP",
    "BACKEND_API",
    "MCP_SERVER",
    "ARCHER_GRC",
    "COSMOS_DB",
    "GRAFANA",
    "ALERTMANAGER",
    "AWS",
    "GCP",
    "AZURE",
    "OCI",
    "GENERATOR",
];

/// The metric label for a source: the source itself when it is a known one, else `custom` (bounded label set).
pub fn source_label(source: &str) -> &'static str {
    KNOWN_SOURCES.iter().find(|s| **s == source).copied().unwrap_or("custom")
}

/// Compiled JSON Schemas for every event type. Build once at start-up and share.
pub struct Catalog {
    validators: Vec<jsonschema::Validator>,
    /// Per type, how to check `data` from its text when the schema allows it (see [`crate::object`]).
    plans: Vec<Option<crate::object::Plan>>,
}

/// At most this many schema errors are reported for one event; the first few say enough.
const MAX_SCHEMA_ERRORS: usize = 10;

impl Catalog {
    /// Compiles every schema. Panics only if a schema shipped in the binary is itself invalid, which the unit
    /// tests rule out.
    pub fn new() -> Self {
        let (validators, plans) = EventType::ALL
            .iter()
            .map(|t| {
                let schema: serde_json::Value =
                    serde_json::from_str(t.schema_text()).unwrap_or_else(|e| panic!("schema for {t} is not JSON: {e}"));
                let validator =
                    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("schema for {t} is invalid: {e}"));
                (validator, crate::object::Plan::of(&schema))
            })
            .unzip();
        Self { validators, plans }
    }

    /// How to check a type's `data` from its text, when its schema allows that.
    pub(crate) fn plan(&self, t: EventType) -> Option<&crate::object::Plan> {
        self.plans[t as usize].as_ref()
    }

    /// The raw JSON Schema document of a type's `data`.
    pub fn schema(&self, t: EventType) -> &'static str {
        t.schema_text()
    }

    /// Validates `data` against the schema of `t`; errors name the field as `data.<path>`.
    pub fn validate_data(&self, t: EventType, data: &serde_json::Value) -> Result<(), Vec<FieldError>> {
        let v = &self.validators[t as usize];
        if v.is_valid(data) {
            return Ok(());
        }
        let errors: Vec<FieldError> = v
            .iter_errors(data)
            .take(MAX_SCHEMA_ERRORS)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                let field = pointer_to_dot_path("data", &pointer);
                let mut msg = e.to_string();
                if msg.len() > 200 {
                    let cut = (0..=200).rev().find(|i| msg.is_char_boundary(*i)).unwrap_or(0);
                    msg.truncate(cut);
                    msg.push('…');
                }
                FieldError::new(field, "schema_violation", msg)
            })
            .collect();
        Err(errors)
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

/// `/a/0/b` under `data` -> `data.a[0].b`.
fn pointer_to_dot_path(root: &str, pointer: &str) -> String {
    let mut out = root.to_string();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_round_trips_by_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
            let j = serde_json::to_value(t).unwrap();
            assert_eq!(serde_json::from_value::<EventType>(j).unwrap(), *t);
        }
        assert_eq!(EventType::ALL.len(), 24);
        assert_eq!(EventType::parse("risk_created"), None);
    }

    #[test]
    fn schemas_compile() {
        let _ = Catalog::new();
    }

    /// Each example in `schemas/json/examples.json` is judged as its label says: valid ones pass, invalid fail.
    #[test]
    fn examples_match_their_labels() {
        let cat = Catalog::new();
        let examples: serde_json::Value = serde_json::from_str(include_str!("../json/examples.json")).unwrap();
        for t in EventType::ALL {
            let ex = &examples[t.as_str()];
            assert!(ex.is_object(), "no example for {t}");
            assert!(cat.validate_data(*t, &ex["valid"]).is_ok(), "{t} valid example rejected");
            let errs = cat.validate_data(*t, &ex["invalid"]["data"]).expect_err("invalid example accepted");
            assert!(errs.iter().all(|e| e.field.starts_with("data")), "{errs:?}");
        }
    }

    #[test]
    fn schema_errors_name_the_field() {
        let cat = Catalog::new();
        let errs = cat.validate_data(EventType::RISK_CREATED, &json!({"riskScore": "high"})).unwrap_err();
        assert_eq!(errs[0].field, "data.riskScore");
        assert_eq!(pointer_to_dot_path("data", "/a/0/b~1c"), "data.a[0].b/c");
    }
}
