//! CloudEvents 1.0 input: structured mode (`application/cloudevents+json`) and binary mode (`ce-*` HTTP headers
//! with the data as body) are mapped onto the evstream envelope, which is then checked like any other event.
//!
//! | CloudEvents            | evstream        |
//! |------------------------|-----------------|
//! | `id`                   | `id`            |
//! | `type`                 | `eventType` (the catalog name, optionally behind a reverse-DNS prefix: `com.acme.RISK_CREATED`) |
//! | `source`               | `source` (a catalog source name such as `FRONTEND_APP`) |
//! | `time`                 | `occurredAt`    |
//! | `subject`              | `entityId`      |
//! | `tenantid` (extension) | `tenantId`      |
//! | `action`, `entitytype`, `correlationid` (extensions) | `action`, `entityType`, `correlationId` |
//! | other extensions       | `metadata.ce_<name>` |
//! | `data`                 | `data` (a JSON object) |

use crate::catalog::EventType;
use crate::field::FieldError;
use serde_json::{Map, Value};

const MAPPED: &[(&str, &str)] = &[
    ("id", "id"),
    ("source", "source"),
    ("time", "occurredAt"),
    ("subject", "entityId"),
    ("tenantid", "tenantId"),
    ("action", "action"),
    ("entitytype", "entityType"),
    ("correlationid", "correlationId"),
];

fn event_type(t: &str) -> String {
    if EventType::parse(t).is_some() {
        return t.to_string();
    }
    t.rsplit('.').next().unwrap_or(t).to_string()
}

fn is_json_content_type(ct: &str) -> bool {
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    ct == "application/json" || ct.ends_with("+json")
}

/// Maps a structured-mode CloudEvent (already parsed JSON) to an envelope document.
pub fn from_structured(ce: &Value) -> Result<Value, Vec<FieldError>> {
    let Some(obj) = ce.as_object() else {
        return Err(vec![FieldError::new("", "wrong_type", "a CloudEvent must be a JSON object")]);
    };
    let mut attrs: Vec<(String, Value)> = Vec::new();
    let mut data = None;
    for (k, v) in obj {
        match k.as_str() {
            "data" => data = Some(v.clone()),
            "data_base64" => {
                return Err(vec![FieldError::new(
                    "data_base64",
                    "unsupported",
                    "binary data is not supported; send JSON `data`",
                )])
            }
            _ => attrs.push((k.clone(), v.clone())),
        }
    }
    build(attrs, data, "")
}

/// Maps a binary-mode CloudEvent: `headers` are (lower-case name without the `ce-` prefix, value); `body` is the
/// data, which must be a JSON object.
pub fn from_binary(
    headers: Vec<(String, String)>,
    content_type: Option<&str>,
    body: Option<Value>,
) -> Result<Value, Vec<FieldError>> {
    if let Some(ct) = content_type {
        if !is_json_content_type(ct) {
            return Err(vec![FieldError::new(
                "content-type",
                "unsupported_media_type",
                "binary-mode data must be JSON (application/json)",
            )]);
        }
    }
    let attrs = headers.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    build(attrs, body, "ce-")
}

fn build(attrs: Vec<(String, Value)>, data: Option<Value>, prefix: &str) -> Result<Value, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut out = Map::new();
    let mut metadata = Map::new();
    let mut saw = (false, false);
    for (k, v) in attrs {
        match k.as_str() {
            "specversion" => {
                saw.0 = true;
                if v.as_str() != Some("1.0") {
                    errs.push(FieldError::new(
                        format!("{prefix}specversion"),
                        "unsupported",
                        "specversion must be \"1.0\"",
                    ));
                }
            }
            "type" => {
                saw.1 = true;
                match v.as_str() {
                    Some(t) => {
                        out.insert("eventType".into(), Value::String(event_type(t)));
                    }
                    None => errs.push(FieldError::wrong_type(&format!("{prefix}type"), "a string")),
                }
            }
            "datacontenttype" => {
                if !v.as_str().is_some_and(is_json_content_type) {
                    errs.push(FieldError::new(
                        format!("{prefix}datacontenttype"),
                        "unsupported_media_type",
                        "data must be JSON",
                    ));
                }
            }
            "dataschema" => {}
            other => match MAPPED.iter().find(|(c, _)| *c == other) {
                Some((_, ours)) => {
                    out.insert((*ours).into(), v);
                }
                None => {
                    let ok_name = !other.is_empty()
                        && other.len() <= 20
                        && other.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                    if ok_name {
                        metadata.insert(format!("ce_{other}"), v);
                    } else {
                        errs.push(FieldError::new(
                            format!("{prefix}{}", other.chars().take(40).collect::<String>()),
                            "invalid_attribute",
                            "CloudEvents attribute names are 1-20 lower-case letters or digits",
                        ));
                    }
                }
            },
        }
    }
    if !saw.0 {
        errs.push(FieldError::missing(&format!("{prefix}specversion")));
    }
    if !saw.1 {
        errs.push(FieldError::missing(&format!("{prefix}type")));
    }
    if !out.contains_key("tenantId") {
        errs.push(FieldError::new(
            format!("{prefix}tenantid"),
            "missing_field",
            "the `tenantid` extension attribute names the tenant",
        ));
    }
    match data {
        None | Some(Value::Null) => {}
        Some(d @ Value::Object(_)) => {
            out.insert("data".into(), d);
        }
        Some(_) => errs.push(FieldError::wrong_type("data", "a JSON object")),
    }
    if !metadata.is_empty() {
        out.insert("metadata".into(), Value::Object(metadata));
    }
    if errs.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_maps_to_envelope() {
        let v = from_structured(
            &json!({"specversion":"1.0","id":"e1","type":"com.acme.RISK_CREATED","source":"FRONTEND_APP",
            "time":"2026-01-01T00:00:00Z","subject":"risk-1","tenantid":"t1","region":"eu","data":{"riskScore":3}}),
        )
        .unwrap();
        assert_eq!(v["eventType"], "RISK_CREATED");
        assert_eq!(v["tenantId"], "t1");
        assert_eq!(v["entityId"], "risk-1");
        assert_eq!(v["occurredAt"], "2026-01-01T00:00:00Z");
        assert_eq!(v["metadata"]["ce_region"], "eu");
        assert_eq!(v["data"]["riskScore"], 3);
    }

    #[test]
    fn missing_attributes_are_named() {
        let e = from_structured(&json!({"id":"x"})).unwrap_err();
        let f: Vec<_> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(f, vec!["specversion", "type", "tenantid"]);
        let e =
            from_binary(vec![("specversion".into(), "0.3".into()), ("type".into(), "RISK_CREATED".into())], None, None)
                .unwrap_err();
        assert_eq!(e[0].field, "ce-specversion");
        assert_eq!(e[1].field, "ce-tenantid");
    }

    #[test]
    fn binary_data_must_be_json() {
        let e = from_binary(vec![], Some("text/plain"), None).unwrap_err();
        assert_eq!(e[0].code, "unsupported_media_type");
    }
}
