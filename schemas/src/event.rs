//! The event envelope. Untrusted JSON becomes an [`EventDraft`] through [`parse_event`], which checks every field
//! and reports all that is wrong at once; the producer's `enrich` step turns a draft into an [`Event`].

use crate::catalog::{Catalog, EventType};
use crate::field::FieldError;
use crate::ids::{EventId, SourceName, TenantId};
pub use crate::object::Object;
use crate::object::{check_text, Floats};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// The version of the envelope written to Kafka and Redis.
pub const SCHEMA_VERSION: &str = "1.0";

/// Longest `action`, `entityId`, `entityType`.
const MAX_SHORT_STRING: usize = 256;

mod bulk;

/// An event as stored: every field present, server fields filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: EventId,
    pub tenant_id: TenantId,
    pub event_type: EventType,
    pub source: SourceName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    pub data: Object,
    pub metadata: Object,
    #[serde(with = "rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub received_at: OffsetDateTime,
    pub schema_version: String,
    pub correlation_id: String,
}

/// Calls `f` with the RFC 3339 text of `t` (`None` if `t` cannot be written so, which the parser never lets in).
/// The text is formatted once per distinct instant and offset on each thread: the events of a request share their
/// receipt time, and most of them their occurrence time, so a bulk request formats its timestamps about once.
pub fn with_rfc3339<R>(t: OffsetDateTime, f: impl FnOnce(Option<&str>) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(OffsetDateTime, Option<String>)>> = const { RefCell::new(None) };
    }
    let format = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).ok();
    LAST.with(|last| {
        // A call from inside `f` (none today) formats afresh instead of sharing the cell.
        let Ok(mut last) = last.try_borrow_mut() else { return f(format(t).as_deref()) };
        // `==` on `OffsetDateTime` compares instants only; the offset changes the text.
        let hit = matches!(&*last, Some((l, _)) if *l == t && l.offset() == t.offset());
        if !hit {
            *last = Some((t, format(t)));
        }
        f(last.as_ref().and_then(|(_, s)| s.as_deref()))
    })
}

/// `time::serde::rfc3339`, writing through [`with_rfc3339`].
mod rfc3339 {
    use serde::{Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        super::with_rfc3339(*t, |text| match text {
            Some(text) => s.serialize_str(text),
            None => Err(serde::ser::Error::custom("timestamp cannot be written as RFC 3339")),
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        time::serde::rfc3339::deserialize(d)
    }
}

/// An event as a client sent it, checked but not yet enriched.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub id: Option<EventId>,
    pub tenant_id: TenantId,
    pub event_type: EventType,
    pub source: SourceName,
    pub action: Option<String>,
    pub entity_id: Option<String>,
    pub entity_type: Option<String>,
    pub data: Object,
    pub metadata: Object,
    pub occurred_at: Option<OffsetDateTime>,
    pub correlation_id: Option<String>,
}

impl EventDraft {
    /// The stored event: the client's fields, with `id`, `correlationId` and `occurredAt` filled where the client
    /// left them out (`id` generated, `correlation_id` given, `occurredAt` the receipt time).
    pub fn into_event(self, received_at: OffsetDateTime, correlation_id: impl FnOnce(&EventId) -> String) -> Event {
        let id = self.id.unwrap_or_else(EventId::generate);
        let correlation_id = self.correlation_id.unwrap_or_else(|| correlation_id(&id));
        Event {
            id,
            tenant_id: self.tenant_id,
            event_type: self.event_type,
            source: self.source,
            action: self.action,
            entity_id: self.entity_id,
            entity_type: self.entity_type,
            data: self.data,
            metadata: self.metadata,
            occurred_at: self.occurred_at.unwrap_or(received_at),
            received_at,
            schema_version: SCHEMA_VERSION.to_string(),
            correlation_id,
        }
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "id",
    "tenantId",
    "eventType",
    "source",
    "action",
    "entityId",
    "entityType",
    "data",
    "metadata",
    "occurredAt",
    "correlationId",
    // Set by evstream; accepted (and overwritten) so that an event read back can be re-posted as it is.
    "receivedAt",
    "schemaVersion",
];

/// Best-effort tenant id of a document, for routing a rejection to the right tenant's counters.
pub fn peek_tenant(v: &Value) -> Option<TenantId> {
    v.get("tenantId").and_then(Value::as_str).and_then(|s| TenantId::new(s).ok())
}

/// Checks an untrusted JSON value field by field. Every problem found is returned, each naming its field.
pub fn parse_event(v: &Value, catalog: &Catalog) -> Result<EventDraft, Vec<FieldError>> {
    parse_owned(v.clone(), catalog).map_err(|(e, _)| e)
}

/// Like [`parse_event`], but takes the document by value so that `data` and `metadata` move into the draft
/// instead of being copied; on failure the document is handed back (for the dead-letter record).
pub fn parse_owned(v: Value, catalog: &Catalog) -> Result<EventDraft, (Vec<FieldError>, Value)> {
    match check(&v, catalog) {
        Err(e) => Err((e, v)),
        Ok(mut d) => {
            if let Value::Object(mut obj) = v {
                d.data = take_object(obj.remove("data")).into();
                d.metadata = take_object(obj.remove("metadata")).into();
            }
            Ok(d)
        }
    }
}

/// The envelope as it arrives, borrowed from the request text. Only a document that is a valid event in every
/// respect gets through [`parse_text`]; anything else (an unknown or repeated field, a wrong type, a string with
/// escapes in an envelope field) is left to [`parse_owned`], which reports every problem.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(default)]
    id: Option<&'a str>,
    tenant_id: &'a str,
    event_type: &'a str,
    source: &'a str,
    #[serde(default)]
    action: Option<&'a str>,
    #[serde(default)]
    entity_id: Option<&'a str>,
    #[serde(default)]
    entity_type: Option<&'a str>,
    // Kept as text: checked from it, and stored as sent where it may be (see [`Object`]).
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    occurred_at: Option<&'a str>,
    #[serde(default)]
    correlation_id: Option<&'a str>,
    // Set by evstream, accepted and overwritten (see `KNOWN_FIELDS`). Strings only: skipping any other value would
    // skip the checks a `Value` parse makes (nesting depth, number range, lone surrogates).
    #[serde(default, rename = "receivedAt")]
    _received_at: Option<&'a str>,
    #[serde(default, rename = "schemaVersion")]
    _schema_version: Option<&'a str>,
}

/// The fast path of [`parse_owned`] for JSON text: a valid event becomes a draft without a `Value` tree for its
/// envelope. `None` means "not known to be valid": the caller parses the text into a `Value` and calls
/// [`parse_owned`], which gives the same draft for every document this accepts and reports what is wrong with the
/// rest.
pub fn parse_text(text: &str, catalog: &Catalog) -> Option<EventDraft> {
    if !is_object_text(text.as_bytes()) {
        return None;
    }
    serde_json::from_str::<Wire<'_>>(text).ok()?.check(catalog)
}

/// A bulk body of the plain shape, `{"events": [...]}`, read in one pass: `each` of its events, in order, when
/// every one would take the fast path of [`parse_text`], with the same draft. `None` when the body has another
/// shape or any of its events needs another path (the pass stops at the first); the caller then takes the body
/// apart item by item. `each` is called as each event is read, so it may have run for the first events of a body
/// that ends as `None`.
pub fn parse_bulk_text<T>(text: &str, catalog: &Catalog, each: impl FnMut(EventDraft) -> T) -> Option<Vec<T>> {
    bulk::parse(text, catalog, each)
}

impl<'a> Wire<'a> {
    fn check(self, catalog: &Catalog) -> Option<EventDraft> {
        let part = |raw: Option<&'a RawValue>| raw.map(|r| Part { text: r.get(), checked: Checked::No });
        Envelope {
            id: self.id,
            tenant_id: self.tenant_id,
            event_type: EventType::parse(self.event_type)?,
            source: self.source,
            action: self.action,
            entity_id: self.entity_id,
            entity_type: self.entity_type,
            data: part(self.data),
            metadata: part(self.metadata),
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
        }
        .check(catalog)
    }
}

/// An envelope read from text by a fast path (serde's [`Wire`], or the bulk reader): its strings borrowed, free
/// of escapes and control characters; its event type known.
struct Envelope<'a> {
    id: Option<&'a str>,
    tenant_id: &'a str,
    event_type: EventType,
    source: &'a str,
    action: Option<&'a str>,
    entity_id: Option<&'a str>,
    entity_type: Option<&'a str>,
    data: Option<Part<'a>>,
    metadata: Option<Part<'a>>,
    occurred_at: Option<&'a str>,
    correlation_id: Option<&'a str>,
}

/// `data` or `metadata` as read from the text, with what reading it checked.
struct Part<'a> {
    text: &'a str,
    checked: Checked,
}

/// What a fast path checked of a part's text as it read it (an object, as [`check_text`] checks one).
#[derive(Clone, Copy)]
enum Checked {
    /// Nothing.
    No,
    /// An object; the schema's plan not tried (the event type was not known yet, or it is `metadata`).
    Alone(Floats),
    /// An object within the schema's plan.
    Planned(Floats),
    /// An object not within the schema's plan, or of a type without one: jsonschema decides.
    Unplanned(Floats),
}

impl Part<'_> {
    /// The part as an object: what reading it found, else checked now.
    fn floats(&self) -> Option<Floats> {
        match self.checked {
            Checked::No => check_text(self.text, None),
            Checked::Alone(floats) | Checked::Planned(floats) | Checked::Unplanned(floats) => Some(floats),
        }
    }
}

impl<'a> Envelope<'a> {
    /// The checks of [`check`] that reading the envelope left: ids, lengths, the timestamp, the parts, the schema.
    fn check(self, catalog: &Catalog) -> Option<EventDraft> {
        let id = match self.id {
            Some(s) => Some(EventId::new(s).ok()?),
            None => None,
        };
        let event_type = self.event_type;
        let short = |s: Option<&str>| match s {
            Some(s) if !short_ok(s) => Err(()),
            s => Ok(s.map(str::to_string)),
        };
        let correlation_id = match self.correlation_id {
            Some(s) => Some(EventId::new(s).ok()?.as_str().to_string()),
            None => None,
        };
        let occurred_at = match self.occurred_at {
            Some(s) => Some(OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?),
            None => None,
        };
        let data = match self.data {
            Some(part) => {
                let text = part.text;
                let planned = match part.checked {
                    Checked::Planned(floats) => Some(floats),
                    Checked::Unplanned(_) => None,
                    Checked::No | Checked::Alone(_) => {
                        catalog.plan(event_type).and_then(|plan| check_text(text, Some(plan)))
                    }
                };
                match planned {
                    Some(floats) => Object::checked(text, floats, None)?,
                    // A schema or a value the text check leaves to jsonschema: the part, checked as an object,
                    // is read and validated.
                    None => {
                        let floats = part.floats()?;
                        let data = Value::Object(serde_json::from_str::<Map<String, Value>>(text).ok()?);
                        catalog.validate_data(event_type, &data).ok()?;
                        Object::checked(text, floats, Some(take_object(Some(data))))?
                    }
                }
            }
            None => {
                catalog.validate_data(event_type, &Value::Object(Map::new())).ok()?;
                Object::default()
            }
        };
        let metadata = match self.metadata {
            Some(part) => Object::checked(part.text, part.floats()?, None)?,
            None => Object::default(),
        };
        Some(EventDraft {
            id,
            tenant_id: TenantId::new(self.tenant_id).ok()?,
            event_type,
            source: SourceName::new(self.source).ok()?,
            action: short(self.action).ok()?,
            entity_id: short(self.entity_id).ok()?,
            entity_type: short(self.entity_type).ok()?,
            data,
            metadata,
            occurred_at,
            correlation_id,
        })
    }
}

/// Does this JSON text start as an object? serde also reads a struct from an array (fields in order), so a typed
/// parse of untrusted text asks this first.
pub fn is_object_text(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `action`, `entityId`, `entityType`: short, and no control characters.
fn short_ok(s: &str) -> bool {
    s.len() <= MAX_SHORT_STRING && !s.chars().any(char::is_control)
}

fn take_object(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Checks every field; the draft it returns has empty `data` and `metadata` (the caller moves them in).
fn check(v: &Value, catalog: &Catalog) -> Result<EventDraft, Vec<FieldError>> {
    let Some(obj) = v.as_object() else {
        return Err(vec![FieldError::new("", "wrong_type", "an event must be a JSON object")]);
    };
    let mut errs = Vec::new();
    for k in obj.keys() {
        if !KNOWN_FIELDS.contains(&k.as_str()) {
            let mut shown: String = k.chars().take(64).collect();
            if shown.len() < k.len() {
                shown.push('…');
            }
            errs.push(FieldError::new(shown.clone(), "unknown_field", format!("unknown field `{shown}`")));
        }
    }

    let id = opt_str(obj, "id", &mut errs)
        .and_then(|s| EventId::new(s).map_err(|e| errs.push(FieldError::new("id", "invalid_id", e.to_string()))).ok());
    let tenant_id = match req_str(obj, "tenantId", &mut errs) {
        Some(s) => {
            TenantId::new(s).map_err(|e| errs.push(FieldError::new("tenantId", "invalid_tenant", e.to_string()))).ok()
        }
        None => None,
    };
    let event_type = match req_str(obj, "eventType", &mut errs) {
        Some(s) => match EventType::parse(s) {
            Some(t) => Some(t),
            None => {
                let shown: String = s.chars().take(64).collect();
                errs.push(FieldError::new(
                    "eventType",
                    "unknown_event_type",
                    format!("`{shown}` is not in the event-type catalog (GET /event-types lists them)"),
                ));
                None
            }
        },
        None => None,
    };
    let source = match req_str(obj, "source", &mut errs) {
        Some(s) => {
            SourceName::new(s).map_err(|e| errs.push(FieldError::new("source", "invalid_source", e.to_string()))).ok()
        }
        None => None,
    };
    let action = short_str(obj, "action", &mut errs);
    let entity_id = short_str(obj, "entityId", &mut errs);
    let entity_type = short_str(obj, "entityType", &mut errs);
    let correlation_id = opt_str(obj, "correlationId", &mut errs).and_then(|s| match EventId::new(s) {
        Ok(_) => Some(s.to_string()),
        Err(_) => {
            errs.push(FieldError::new(
                "correlationId",
                "invalid_id",
                "correlationId must be 1-128 printable ASCII characters without spaces",
            ));
            None
        }
    });
    let data = opt_object(obj, "data", &mut errs);
    let metadata = opt_object(obj, "metadata", &mut errs);
    let occurred_at = opt_str(obj, "occurredAt", &mut errs).and_then(|s| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                errs.push(FieldError::new(
                    "occurredAt",
                    "invalid_timestamp",
                    "occurredAt must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z",
                ))
            })
            .ok()
    });

    if let (Some(t), Some(_)) = (event_type, data.as_ref()) {
        let empty = Value::Object(Map::new());
        let target = match obj.get("data") {
            Some(v @ Value::Object(_)) => v,
            _ => &empty,
        };
        if let Err(mut e) = catalog.validate_data(t, target) {
            errs.append(&mut e);
        }
    }

    match (tenant_id, event_type, source, data, metadata) {
        (Some(tenant_id), Some(event_type), Some(source), Some(data), Some(metadata)) if errs.is_empty() => {
            Ok(EventDraft {
                id,
                tenant_id,
                event_type,
                source,
                action,
                entity_id,
                entity_type,
                data: data.into(),
                metadata: metadata.into(),
                occurred_at,
                correlation_id,
            })
        }
        _ => Err(errs),
    }
}

fn req_str<'a>(obj: &'a Map<String, Value>, f: &str, errs: &mut Vec<FieldError>) -> Option<&'a str> {
    match obj.get(f) {
        None | Some(Value::Null) => {
            errs.push(FieldError::missing(f));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errs.push(FieldError::wrong_type(f, "a string"));
            None
        }
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, f: &str, errs: &mut Vec<FieldError>) -> Option<&'a str> {
    match obj.get(f) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errs.push(FieldError::wrong_type(f, "a string"));
            None
        }
    }
}

fn short_str(obj: &Map<String, Value>, f: &str, errs: &mut Vec<FieldError>) -> Option<String> {
    let s = opt_str(obj, f, errs)?;
    if !short_ok(s) {
        errs.push(FieldError::new(
            f,
            "invalid_value",
            format!("`{f}` must be at most {MAX_SHORT_STRING} bytes without control characters"),
        ));
        return None;
    }
    Some(s.to_string())
}

/// `Some(empty map)` when absent or an object (moved in later by `parse_owned`); `None` after a type error.
fn opt_object(obj: &Map<String, Value>, f: &str, errs: &mut Vec<FieldError>) -> Option<Map<String, Value>> {
    match obj.get(f) {
        None | Some(Value::Null) | Some(Value::Object(_)) => Some(Map::new()),
        Some(_) => {
            errs.push(FieldError::wrong_type(f, "a JSON object"));
            None
        }
    }
}

impl Event {
    /// Looks up a dot path (`data.score`, `metadata.region`, `eventType`) in the event's JSON form.
    pub fn field(&self, path: &str) -> Option<Value> {
        let mut parts = path.split('.');
        let head = parts.next()?;
        let root: Value = match head {
            "data" => return walk(&self.data, parts),
            "metadata" => return walk(&self.metadata, parts),
            "id" => self.id.as_str().into(),
            "tenantId" => self.tenant_id.as_str().into(),
            "eventType" => self.event_type.as_str().into(),
            "source" => self.source.as_str().into(),
            "action" => self.action.clone()?.into(),
            "entityId" => self.entity_id.clone()?.into(),
            "entityType" => self.entity_type.clone()?.into(),
            "correlationId" => self.correlation_id.clone().into(),
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(root)
    }
}

fn walk<'a>(map: &Map<String, Value>, mut parts: impl Iterator<Item = &'a str>) -> Option<Value> {
    let first = parts.next()?;
    let mut cur = map.get(first)?;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cat() -> Catalog {
        Catalog::new()
    }

    #[test]
    fn minimal_event_parses() {
        let d = parse_event(
            &json!({"tenantId":"t1","eventType":"RISK_CREATED","source":"FRONTEND_APP","data":{"test":true}}),
            &cat(),
        )
        .unwrap();
        assert_eq!(d.tenant_id.as_str(), "t1");
        assert_eq!(d.event_type, EventType::RISK_CREATED);
        assert!(d.id.is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errs = parse_event(
            &json!({"tenantId": 5, "eventType": "NOPE", "data": [], "occurredAt": "yesterday", "extra": 1}),
            &cat(),
        )
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert!(fields.contains(&("tenantId", "wrong_type")), "{fields:?}");
        assert!(fields.contains(&("eventType", "unknown_event_type")));
        assert!(fields.contains(&("source", "missing_field")));
        assert!(fields.contains(&("data", "wrong_type")));
        assert!(fields.contains(&("occurredAt", "invalid_timestamp")));
        assert!(fields.contains(&("extra", "unknown_field")));
    }

    /// Found by fuzzing: numbers must survive parse -> store -> parse exactly (serde_json's float_roundtrip).
    #[test]
    fn numbers_round_trip_exactly() {
        let text =
            r#"{"tenantId":"t","eventType":"USER_ACTION","source":"AWS","data":{"x":4.4444444444444455e+106,"y":0.1}}"#;
        let d = parse_event(&serde_json::from_str(text).unwrap(), &cat()).unwrap();
        let stored = serde_json::to_string(&d.data).unwrap();
        let back: Map<String, Value> = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, *d.data);
        assert_eq!(d.data["x"].as_f64(), Some(4.4444444444444455e106));
    }

    #[test]
    fn not_an_object() {
        assert_eq!(parse_event(&json!([1]), &cat()).unwrap_err()[0].code, "wrong_type");
    }

    #[test]
    fn schema_violation_in_data() {
        let errs = parse_event(
            &json!({"tenantId":"t","eventType":"RISK_CREATED","source":"AWS","data":{"riskScore":"x"}}),
            &cat(),
        )
        .unwrap_err();
        assert_eq!(errs[0].field, "data.riskScore");
        assert_eq!(errs[0].code, "schema_violation");
    }

    #[test]
    fn timestamps_are_written_as_time_writes_them() {
        let utc = time::macros::datetime!(2026-01-31 12:00:00.5 UTC);
        let same_instant = utc.to_offset(time::macros::offset!(+2));
        for t in [utc, same_instant, utc, time::macros::datetime!(2026-01-31 12:00:00 -05:30)] {
            let want = t.format(&time::format_description::well_known::Rfc3339).unwrap();
            assert_eq!(with_rfc3339(t, |s| s.map(str::to_string)), Some(want));
        }
    }

    #[test]
    fn text_fast_path_takes_plain_events() {
        let text = r#"{"tenantId":"t1","eventType":"RISK_CREATED","source":"FRONTEND_APP","action":"CREATE",
            "entityId":"r-1","data":{"title":"x", "riskScore":5},"metadata":{"region":"eu"},"id":null,
            "occurredAt":"2026-01-31T12:00:00+02:00","receivedAt":"x"}"#;
        let fast = parse_text(text, &cat()).expect("a valid plain event takes the fast path");
        assert_eq!(Ok(fast.clone()), parse_event(&serde_json::from_str(text).unwrap(), &cat()));
        // `data` and `metadata` as sent, spacing and key order kept.
        assert_eq!(
            (fast.data.text(), fast.metadata.text()),
            (Some(r#"{"title":"x", "riskScore":5}"#), Some(r#"{"region":"eu"}"#))
        );
        let bare = parse_text(r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":null}"#, &cat());
        assert_eq!(bare.map(|d| (d.data.text().is_none(), d.metadata.text().is_none())), Some((true, true)));
        // Left to the full parser: an escape in an envelope field, a repeated field, a schema violation, an array
        // (which serde would read as a struct), a value the full parse refuses in a field the draft drops, and a
        // repeated key inside `data` or `metadata` (whose text could not be stored as sent).
        for text in [
            r#"{"tenantId":"t\u0031","eventType":"USER_ACTION","source":"AWS"}"#,
            r#"{"tenantId":"t1","tenantId":"t2","eventType":"USER_ACTION","source":"AWS"}"#,
            r#"{"tenantId":"t1","eventType":"RISK_CREATED","source":"AWS","data":{"riskScore":"x"}}"#,
            r#"[null,"t1","USER_ACTION","AWS"]"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","receivedAt":1e400}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":{"a":1,"a":2}}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":{"x":[{"y":1,"y":1}]}}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":[1]}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":{"x":1e400}}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":{"x":"\ud800"}}"#,
            // serde_json's `Value` reads this key's string as JSON text: a reader would see another value.
            r#"{"tenantId":"t1","eventType":"RISK_CREATED","source":"AWS","data":{"$serde_json::private::RawValue":"{\"riskScore\":1000}"}}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":{"x":{"$serde_json::private::RawValue":"no"}}}"#,
        ] {
            assert_eq!(parse_text(text, &cat()), None, "{text}");
        }
    }

    /// A part is stored as sent only when each of its numbers is written as serde_json writes the value it read;
    /// else it is written from the map, so that an exact reader finds the value that was checked.
    #[test]
    fn numbers_are_stored_as_checked() {
        let raw = |data: &str| {
            let text = format!(r#"{{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":{data}}}"#);
            parse_text(&text, &cat()).map(|d| d.data.text().map(str::to_string))
        };
        for kept in [
            r#"{"a":5.0,"b":[1,-2,0.1,1e+21,1.5e-7],"c":"1E2 in a string"}"#,
            r#"{"a":18446744073709551615}"#,
            r#"{ "a" :  5.0 , "b": {"c"	:-2.5e-7}}"#,
            r#"{"\u0061":5.0,"b":0.25}"#,
        ] {
            assert_eq!(raw(kept), Some(Some(kept.to_string())), "{kept}");
        }
        for written in [
            r#"{"a":1E2}"#,
            r#"{"a":1e21}"#,
            r#"{"a":5.00}"#,
            r#"{"a":100.00000000000000001}"#,
            r#"{"a":-1e-400}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":-0,"b":0.5}"#,
            r#"{"s":"\"","a":[{"b":2.50}]}"#,
            r#"{ "a" :  5.00 }"#,
            r#"{"\u0061":5.00}"#,
            r#"{"a":{"b":1,"c":  1e1}}"#,
        ] {
            assert_eq!(raw(written), Some(None), "{written}");
        }
    }

    /// `data` may nest as deep as the full parse of the whole event allows, and no deeper: a stored event must be
    /// readable by serde_json again.
    #[test]
    fn fast_path_nesting_limit_is_the_full_parsers() {
        for depth in 120..=130 {
            let part = format!("{}{}", r#"{"a":"#.repeat(depth), "1".to_string() + &"}".repeat(depth));
            for text in [
                format!(r#"{{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":{part}}}"#),
                format!(r#"{{"data":{part},"tenantId":"t1","eventType":"USER_ACTION","source":"AWS"}}"#),
                format!(r#"{{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":{part}}}"#),
            ] {
                let full = serde_json::from_str::<Value>(&text).ok().and_then(|v| parse_event(&v, &cat()).ok());
                let fast = parse_text(&text, &cat());
                assert_eq!(fast, full, "depth {depth}");
                let bulk = parse_bulk_text(&format!(r#"{{"events":[{text}]}}"#), &cat(), |c| c);
                assert_eq!(bulk.map(kept), fast.clone().map(|f| kept(vec![f])), "bulk, depth {depth}");
                if let Some(d) = fast {
                    let stored = enrich_for_test(d).to_json().unwrap();
                    assert!(serde_json::from_slice::<Value>(&stored).is_ok(), "depth {depth}");
                }
            }
        }
    }

    /// Drafts with the texts they keep of `data` and `metadata` (equal drafts may keep different texts).
    fn kept(drafts: Vec<EventDraft>) -> Vec<(EventDraft, Option<String>, Option<String>)> {
        drafts
            .into_iter()
            .map(|d| {
                let texts = (d.data.text().map(str::to_string), d.metadata.text().map(str::to_string));
                (d, texts.0, texts.1)
            })
            .collect()
    }

    fn enrich_for_test(d: EventDraft) -> Event {
        d.into_event(OffsetDateTime::now_utc(), |_| "c".to_string())
    }

    #[test]
    fn bulk_text_in_one_pass() {
        let a = r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":{"k":"v"}}"#;
        let b = r#"{"tenantId":"t2","eventType":"RISK_CREATED","source":"GCP","data":{"riskScore":5}}"#;
        let body = format!("{{ \"events\" : [ {a} ,\n{b} ] }}");
        let got = parse_bulk_text(&body, &cat(), |c| c).expect("a plain body of valid events");
        assert_eq!(kept(got), kept(vec![parse_text(a, &cat()).unwrap(), parse_text(b, &cat()).unwrap()]));
        assert_eq!(parse_bulk_text(r#"{"events":[]}"#, &cat(), |c| c), Some(vec![]));
        // Any other shape, or any event that needs the full parse, and the body is left to the item-by-item path.
        let bad = r#"{"tenantId":"t1","eventType":"NOPE","source":"AWS"}"#;
        for body in [
            format!(r#"{{"events":[{a},{bad}]}}"#),
            format!(r#"{{"events":[{a}],"extra":1}}"#),
            format!(r#"{{"events":[{a}],"events":[{a}]}}"#),
            r#"{"events":[[null,"t1","USER_ACTION","AWS"]]}"#.to_string(),
            format!(r#"[[{a}]]"#),
            format!(r#"{{"events":{a}}}"#),
            format!(r#"{{"\u0065vents":[{a}]}}"#),
            "{}".to_string(),
            format!(r#"{{"events":[{a}]}} x"#),
            format!(r#"{{"events":[{a},]}}"#),
            format!(r#"{{"events":[{a}}}"#),
            format!(r#"{{"events":[{a}]"#),
            format!(r#"{{"events":[{a}]}}}}"#),
            format!(r#"{{"events":[{a}{a}]}}"#),
            format!("{{\"events\":[{a}]}}\u{b}"),
        ] {
            assert_eq!(parse_bulk_text(&body, &cat(), |c| c), None, "{body}");
        }
    }

    /// The bulk reader takes what the fast path takes, however the envelope is spaced and ordered, and leaves the
    /// rest (escapes, repeated or unknown fields, wrong types, a control character, a schema violation) to the
    /// item-by-item path.
    #[test]
    fn bulk_reader_cases() {
        let taken = [
            // The event type after `data`: the schema is checked after the envelope is read.
            r#"{"data":{"title":"x","riskScore":5},"source":"AWS","eventType":"RISK_CREATED","tenantId":"t1"}"#,
            "{ \"tenantId\" :\t\"t1\" ,\r\n\"eventType\":\n\"RISK_CREATED\" , \"source\" : \"AWS\" ,
                \"data\" : { \"riskScore\" : 5.0 } , \"metadata\" :{ } }",
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","id":null,"action":null,"entityId":null,
                "entityType":null,"data":null,"metadata":null,"occurredAt":null,"correlationId":null,
                "receivedAt":null,"schemaVersion":null}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","receivedAt":"x","schemaVersion":"0",
                "occurredAt":"2026-01-31T12:00:00.5+01:00","action":"é 😀","data":{"a":1E2,"b":{"\u0061":[]}}}"#,
            // A schema the plan cannot check (`pattern`, `items`, ...) is left to jsonschema, as the fast path does.
            r#"{"tenantId":"t1","eventType":"ASSESSMENT_STARTED","source":"AWS","data":{"startDate":"2026-01-31"}}"#,
        ];
        // Every ordered pair, so that what one event's parts leave in the reader meets the next event.
        for first in taken {
            for second in taken {
                let want = [first, second].map(|t| parse_text(t, &cat()).expect(t)).to_vec();
                let body = format!("{{\"events\":[{first},\n{second}]}}");
                assert_eq!(parse_bulk_text(&body, &cat(), |c| c).map(kept), Some(kept(want)), "{body}");
            }
        }
        for text in [
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","action":"a\"b"}"#,
            "{\"tenantId\":\"t1\",\"eventType\":\"USER_ACTION\",\"source\":\"AWS\",\"action\":\"a\u{1}b\"}",
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","source":"AWS"}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":null,"data":{}}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","other":1}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":null}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION"}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","id":7}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","receivedAt":true}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":"{}"}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":[]}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":{"a":1,"a":1}}"#,
            r#"{"data":{"a":1,"a":1},"tenantId":"t1","eventType":"USER_ACTION","source":"AWS"}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":{"a":1,"a":1}}"#,
            // Refused only at its end (more keys than are compared as they come).
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","metadata":{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"a":1}}"#,
            r#"{"data":{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"a":1},"tenantId":"t1","eventType":"USER_ACTION","source":"AWS"}"#,
            r#"{"tenantId":"t1","eventType":"RISK_CREATED","source":"AWS","data":{"riskScore":"high"}}"#,
            r#"{"data":{"riskScore":"high"},"tenantId":"t1","eventType":"RISK_CREATED","source":"AWS"}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS","data":nul}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS",}"#,
            r#"{"tenantId":"t1","eventType":"USER_ACTION","source":"AWS""#,
            "{\"tenantId\":\"t1\",\"eventType\":\"USER_ACTION\",\u{a0}\"source\":\"AWS\"}",
            "{}",
        ] {
            assert_eq!(parse_text(text, &cat()), None, "{text}");
            let body = format!(r#"{{"events":[{text}]}}"#);
            assert_eq!(parse_bulk_text(&body, &cat(), |c| c), None, "{text}");
        }
        // An escaped field name: serde's fast path reads it, the bulk reader leaves it to the item-by-item path
        // (which takes that fast path). No client writes one.
        let text = r#"{"tenant\u0049d":"t1","eventType":"USER_ACTION","source":"AWS"}"#;
        assert!(parse_text(text, &cat()).is_some());
        assert_eq!(parse_bulk_text(&format!(r#"{{"events":[{text}]}}"#), &cat(), |c| c), None);
    }

    static CATALOG: std::sync::LazyLock<Catalog> = std::sync::LazyLock::new(Catalog::new);

    /// Field values that are valid, invalid, null, of the wrong type, or escaped.
    fn field_value(name: &'static str) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            30 => proptest::sample::select(valid_values(name)).prop_map(str::to_string),
            1 => Just("null".to_string()),
            1 => Just("7".to_string()),
            1 => Just(r#""\u0041x""#.to_string()),
            1 => Just("[1]".to_string()),
            1 => Just(format!("\"{}\"", "x".repeat(300))),
            1 => Just(r#""tab\there""#.to_string()),
            // Well-formed, but beyond what a `Value` parse takes.
            1 => Just("1e400".to_string()),
            1 => Just(format!("{}{}", "[".repeat(200), "]".repeat(200))),
            1 => Just(r#""\ud800""#.to_string()),
        ]
    }

    /// Values of a field that are mostly valid (a few `data` values break their type's schema, or repeat a key).
    fn valid_values(name: &str) -> &'static [&'static str] {
        match name {
            "tenantId" => &[r#""t1""#, r#""acme-corp""#],
            "eventType" => &[r#""RISK_CREATED""#, r#""USER_ACTION""#, r#""AUDIT_EVENT""#, r#""ASSESSMENT_STARTED""#],
            "source" => &[r#""AWS""#, r#""FRONTEND_APP""#],
            "occurredAt" => &[r#""2026-01-31T12:00:00Z""#, r#""2026-01-31T12:00:00.5+01:00""#],
            // Within a plan or not, floats written as serde writes them or not, nested, escaped keys, and a
            // property only jsonschema checks.
            "data" => &[
                r#"{"title":"x","riskScore":5}"#,
                r#"{"riskScore":"high"}"#,
                "{}",
                r#"{"riskScore":5.0,"title":"x"}"#,
                r#"{"title":"x","riskScore":1E1,"w":2.50}"#,
                r#"{"a":{"b":[1,-0,{"c":null,"d":[true,"\u00e9"]}]},"riskScore":7}"#,
                r#"{"\u0061":1,"title":"t"}"#,
                r#"{"startDate":"2026-01-31","riskScore":3}"#,
                r#"{"a":1,"b":{"c":2,"c":3}}"#,
                r#"{"riskScore":-1,"title":"x"}"#,
            ],
            "metadata" => &[r#"{"region":"eu"}"#, "{}", r#"{"k":1,"k":2}"#],
            _ => &[r#""abc""#, r#""a b""#],
        }
    }

    /// Events with every required field and values from [`valid_values`], fields in any order: most are valid.
    fn plain_document() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let required = ["tenantId", "eventType", "source"];
        let optional: Vec<&'static str> = KNOWN_FIELDS.iter().copied().filter(|n| !required.contains(n)).collect();
        proptest::sample::subsequence(optional.clone(), 0..=optional.len())
            .prop_map(move |mut names| {
                names.extend(required);
                names
            })
            .prop_flat_map(|names| Just(names).prop_shuffle())
            .prop_flat_map(|names| {
                let values: Vec<_> =
                    names.iter().map(|n| proptest::sample::select(valid_values(n)).prop_map(str::to_string)).collect();
                (Just(names), values)
            })
            .prop_map(|(names, values)| {
                let fields: Vec<String> = names.iter().zip(&values).map(|(n, v)| format!("\"{n}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            })
    }

    fn document() -> impl proptest::strategy::Strategy<Value = (String, bool)> {
        use proptest::prelude::*;
        // The required fields are there more often than not, so that many documents are valid.
        let required = ["tenantId", "eventType", "source"];
        let optional: Vec<&'static str> = KNOWN_FIELDS.iter().copied().filter(|n| !required.contains(n)).collect();
        let flags = (proptest::bool::weighted(0.1), proptest::bool::weighted(0.1));
        (proptest::sample::subsequence(optional.clone(), 0..=optional.len()), flags)
            .prop_map(move |(mut names, (drop_one, extra))| {
                names.extend(required.iter().skip(usize::from(drop_one)));
                names.extend(extra.then_some("extra"));
                names
            })
            // In any order: `data` before or after `eventType`, say.
            .prop_flat_map(|names| Just(names).prop_shuffle())
            .prop_flat_map(|names| {
                let values: Vec<_> = names.iter().map(|n| field_value(n)).collect();
                (Just(names), values, proptest::bool::weighted(0.05), proptest::bool::weighted(0.05))
            })
            .prop_map(|(names, values, repeat, as_array)| -> (String, bool) {
                let mut fields: Vec<String> = names.iter().zip(&values).map(|(n, v)| format!("\"{n}\":{v}")).collect();
                let repeated = repeat && !fields.is_empty();
                if let (true, Some(f)) = (repeated, fields.first().cloned()) {
                    fields.push(f);
                }
                // Now and then the values alone, as an array: serde can read a struct from one.
                if as_array {
                    let values: Vec<&str> = fields.iter().filter_map(|f| f.split_once(':').map(|(_, v)| v)).collect();
                    return (format!("[{}]", values.join(",")), repeated);
                }
                (format!("{{{}}}", fields.join(",")), repeated)
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

        /// Arbitrary JSON never panics the parser, and anything it accepts has a valid tenant.
        #[test]
        fn parser_total(s in "\\PC{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                if let Ok(d) = parse_event(&v, &CATALOG) {
                    proptest::prop_assert!(TenantId::new(d.tenant_id.as_str()).is_ok());
                }
            }
        }

        /// The text fast path accepts only what the full parser accepts, with the same draft, and takes every
        /// valid event without escapes, repeated fields or non-string server fields.
        #[test]
        fn text_fast_path_agrees((text, repeated) in document()) {
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                proptest::prop_assert!(parse_text(&text, &CATALOG).is_none(), "{}", text);
                return Ok(());
            };
            let full = parse_event(&v, &CATALOG);
            match parse_text(&text, &CATALOG) {
                Some(fast) => {
                    // The kept texts hold the draft's values.
                    for part in [&fast.data, &fast.metadata] {
                        if let Some(t) = part.text() {
                            let back = serde_json::from_str::<Map<String, Value>>(t).ok();
                            proptest::prop_assert_eq!(back.as_ref(), Some(part.map()));
                        }
                    }
                    proptest::prop_assert_eq!(Ok(fast), full, "{}", text)
                }
                None => {
                    // Server fields that are not strings are left to the full parser too.
                    let odd = ["receivedAt", "schemaVersion"]
                        .iter()
                        .any(|f| v.get(f).is_some_and(|x| !x.is_string() && !x.is_null()));
                    // So is a part with a repeated key (its text could not be stored as sent).
                    let repeated_inside = text.contains(r#""c":2,"c":3"#) || text.contains(r#""k":1,"k":2"#);
                    let left = repeated || odd || repeated_inside || text.contains('\\');
                    proptest::prop_assert!(full.is_err() || left, "{}", text)
                }
            }
        }

        /// A bulk body is read in one pass exactly when the fast path takes each of its events, with the same
        /// drafts and kept texts: as generated, and with whitespace around every token.
        #[test]
        fn bulk_reader_agrees(
            (a, _) in document(),
            (b, _) in document(),
            ws in proptest::collection::vec(proptest::sample::select(vec!["", " ", "\t", "\n", "\r\n", "  "]), 1..6),
        ) {
            let (spaced_a, spaced_b, w) = (respace(&a, &ws), respace(&b, &ws), ws[0]);
            for (items, w) in [(vec![&a], ""), (vec![&a, &b], ""), (vec![&spaced_a], w), (vec![&spaced_a, &spaced_b], w)] {
                let want = items.iter().map(|t| parse_text(t, &CATALOG)).collect::<Option<Vec<_>>>();
                let joined = items.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(&format!("{w},{w}"));
                let body = format!("{w}{{{w}\"events\"{w}:{w}[{w}{joined}{w}]{w}}}{w}");
                let got = parse_bulk_text(&body, &CATALOG, |c| c);
                proptest::prop_assert_eq!(got.map(kept), want.map(kept), "{}", body);
            }
        }

        /// Altered bodies (a byte replaced, inserted or removed, anywhere, any value; or cut short): whatever the
        /// reader takes, serde_json takes too, with events that the fast path takes one by one, with the same
        /// drafts.
        #[test]
        fn bulk_reader_takes_no_broken_body(
            a in plain_document(),
            b in plain_document(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let body = format!(r#"{{"events":[{a}, {b}]}}"#).into_bytes();
            let at = at.index(body.len());
            let mut replaced = body.clone();
            replaced[at] = byte;
            let mut inserted = body.clone();
            inserted.insert(at, byte);
            let mut removed = body.clone();
            removed.remove(at);
            for altered in [body[..at].to_vec(), replaced, inserted, removed] {
                let Ok(text) = std::str::from_utf8(&altered) else { continue };
                if let Some(got) = parse_bulk_text(text, &CATALOG, |c| c) {
                    let items = serde_items(text);
                    proptest::prop_assert!(items.is_some(), "{}", text);
                    let each = items.unwrap_or_default().iter().map(|i| parse_text(i, &CATALOG)).collect::<Option<Vec<_>>>();
                    proptest::prop_assert_eq!(Some(kept(got)), each.map(kept), "{}", text);
                }
            }
        }
    }

    /// `text` with whitespace from `ws` (in turn) before and after each of JSON's structural characters outside
    /// strings.
    fn respace(text: &str, ws: &[&str]) -> String {
        let mut out = String::new();
        let mut turn = ws.iter().cycle();
        let (mut in_string, mut escaped) = (false, false);
        for c in text.chars() {
            if in_string {
                out.push(c);
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '{' | '[' | ',' | ':' | '}' | ']' => {
                    out.push_str(turn.next().copied().unwrap_or_default());
                    out.push(c);
                    out.push_str(turn.next().copied().unwrap_or_default());
                }
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        out
    }

    /// The events of a bulk body of the plain shape as serde_json reads it (each item's text), `None` when it
    /// refuses the body.
    fn serde_items(text: &str) -> Option<Vec<&str>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Plain<'a> {
            #[serde(borrow)]
            events: Vec<&'a RawValue>,
        }
        let plain: Plain<'_> = serde_json::from_str(text).ok()?;
        Some(plain.events.iter().map(|r| r.get()).collect())
    }
}
