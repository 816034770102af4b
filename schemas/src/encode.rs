//! The stored envelope as JSON text, written by hand: byte for byte what `serde_json::to_vec(&event)` writes (a
//! property test holds the two together), but faster on the ingest path, except that `data` and `metadata` are
//! copied from the client's text where the parser kept it (see [`crate::object::Object`]). serde_json looks at
//! every byte of every string to find what needs escaping; here a string is first checked whole, eight bytes at a
//! time ([`crate::scan::clean`]), and copied in one piece when it is clean, which nearly every string is. Only a
//! string that needs escaping goes through serde_json.

use crate::event::{with_rfc3339, Event};
use crate::object::Object;
use serde_json::{Map, Value};

impl Event {
    /// The envelope as stored in Kafka and Redis, with `data` and `metadata` as the client sent them where their
    /// text was kept. `None` only if a timestamp cannot be written as RFC 3339, which the parser never lets in.
    pub fn to_json(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.json_capacity());
        let o = &mut out;
        o.extend_from_slice(b"{\"id\":");
        string(o, self.id.as_str());
        // A tenant id and a source name are letters, digits and `._-` (their types check it), an event type is
        // the catalog's, and a timestamp is RFC 3339: nothing to escape in them.
        o.extend_from_slice(b",\"tenantId\":");
        plain(o, self.tenant_id.as_str());
        o.extend_from_slice(b",\"eventType\":");
        plain(o, self.event_type.as_str());
        o.extend_from_slice(b",\"source\":");
        plain(o, self.source.as_str());
        for (name, v) in [
            (&b",\"action\":"[..], &self.action),
            (b",\"entityId\":", &self.entity_id),
            (b",\"entityType\":", &self.entity_type),
        ] {
            if let Some(v) = v {
                o.extend_from_slice(name);
                string(o, v);
            }
        }
        o.extend_from_slice(b",\"data\":");
        part(o, &self.data);
        o.extend_from_slice(b",\"metadata\":");
        part(o, &self.metadata);
        o.extend_from_slice(b",\"occurredAt\":");
        with_rfc3339(self.occurred_at, |t| t.map(|t| plain(o, t)))?;
        o.extend_from_slice(b",\"receivedAt\":");
        with_rfc3339(self.received_at, |t| t.map(|t| plain(o, t)))?;
        o.extend_from_slice(b",\"schemaVersion\":");
        string(o, &self.schema_version);
        o.extend_from_slice(b",\"correlationId\":");
        string(o, &self.correlation_id);
        o.push(b'}');
        Some(out)
    }

    /// Room for [`Event::to_json`]'s whole text, so that it is allocated once: exact but for the timestamps when no
    /// string needs escaping and `data` and `metadata` are kept as text (a map is guessed at 64 bytes an entry).
    fn json_capacity(&self) -> usize {
        /// The names, quotes and punctuation of an envelope with every field present.
        const FIXED: usize = concat!(
            r#"{"id":"","tenantId":"","eventType":"","source":"","action":"","entityId":"","entityType":"","#,
            r#""data":,"metadata":,"occurredAt":"","receivedAt":"","schemaVersion":"","correlationId":""}"#
        )
        .len();
        /// The longest RFC 3339 text of a timestamp: `2026-12-06T02:46:00.123456789+01:00`.
        const TIMESTAMP: usize = 35;
        let part = |o: &Object| o.text().map_or_else(|| 64 * o.len(), str::len);
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        FIXED
            + 2 * TIMESTAMP
            + self.id.as_str().len()
            + self.tenant_id.as_str().len()
            + self.event_type.as_str().len()
            + self.source.as_str().len()
            + opt(&self.action)
            + opt(&self.entity_id)
            + opt(&self.entity_type)
            + self.schema_version.len()
            + self.correlation_id.len()
            + part(&self.data)
            + part(&self.metadata)
    }
}

/// Appends `data` or `metadata`: the client's text where it is kept, else the map.
fn part(out: &mut Vec<u8>, p: &Object) {
    match p.text() {
        Some(text) => out.extend_from_slice(text.as_bytes()),
        None => object(out, p),
    }
}

/// Appends `s` as a JSON string, byte for byte as serde_json writes it.
pub fn string(out: &mut Vec<u8>, s: &str) {
    if crate::scan::clean(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends `s`, which has nothing to escape, as a JSON string.
fn plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(crate::scan::clean(s.as_bytes()), "{s:?} needs escaping");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn object(out: &mut Vec<u8>, m: &Map<String, Value>) {
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Numbers as serde_json writes them (the same integer and float formatting); cannot fail into a `Vec`.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => string(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(out, v);
            }
            out.push(b']');
        }
        Value::Object(m) => object(out, m),
    }
}

#[cfg(test)]
mod tests {
    use crate::event::Event;
    use crate::{EventId, EventType, SourceName, TenantId};
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Any JSON value, with strings that need escaping (quotes, backslashes, control characters, non-ASCII) and
    /// numbers of every kind.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
            "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-z\"\\\\\n]{0,6}|\\PC{0,6}", json(), 0..6).prop_map(|m| m.into_iter().collect())
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-zA-Z0-9 _-]{0,20}", any::<String>(), "[a\"\\\\\t\u{1}]{0,6}"]
    }

    fn event() -> impl Strategy<Value = Event> {
        let optional = (prop::option::of(text()), prop::option::of(text()), prop::option::of(text()));
        let times = (0i64..4_000_000_000, 0u32..1_000_000_000, -86_399i32..86_400);
        // Offsets in whole minutes mostly; one with seconds cannot be written as RFC 3339, and both writers refuse it.
        let times = (times, any::<bool>());
        (optional, object(), object(), times, (text(), text(), text())).prop_map(
            |(
                (action, entity_id, entity_type),
                data,
                metadata,
                ((secs, nanos, offset), seconds),
                (version, correlation, id),
            )| {
                let offset = if seconds { offset } else { offset - offset % 60 };
                let offset = time::UtcOffset::from_whole_seconds(offset).expect("offset in range");
                let at = time::OffsetDateTime::from_unix_timestamp(secs).expect("time in range")
                    + time::Duration::nanoseconds(i64::from(nanos));
                Event {
                    // A client's id when it is a valid one (quotes and backslashes among them), else a new one.
                    id: EventId::new(id).unwrap_or_else(|_| EventId::generate()),
                    tenant_id: TenantId::new("acme-corp").expect("valid tenant"),
                    event_type: EventType::RISK_CREATED,
                    source: SourceName::new("FRONTEND_APP").expect("valid source"),
                    action,
                    entity_id,
                    entity_type,
                    data: data.into(),
                    metadata: metadata.into(),
                    occurred_at: at.to_offset(offset),
                    received_at: at,
                    schema_version: version,
                    correlation_id: correlation,
                }
            },
        )
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]

        /// The hand-written envelope is exactly serde's.
        #[test]
        fn same_bytes_as_serde(e in event()) {
            prop_assert_eq!(e.to_json(), serde_json::to_vec(&e).ok());
        }

        /// An envelope whose strings need no escaping, with `data` and `metadata` kept as text, fits the room
        /// [`Event::json_capacity`] gives it: the buffer is never grown.
        #[test]
        fn the_text_fits_its_buffer(mut e in event()) {
            let data = serde_json::to_string(&e.data).unwrap();
            let metadata = serde_json::to_string(&e.metadata).unwrap();
            e.data = crate::object::Object::from_checked_text(&data);
            e.metadata = crate::object::Object::from_checked_text(&metadata);
            let opt = |s: &Option<String>| s.as_deref().unwrap_or_default().to_string();
            let strings = [
                e.id.as_str().to_string(),
                opt(&e.action),
                opt(&e.entity_id),
                opt(&e.entity_type),
                e.schema_version.clone(),
                e.correlation_id.clone(),
            ];
            if let (true, Some(json)) = (strings.iter().all(|s| crate::scan::clean(s.as_bytes())), e.to_json()) {
                prop_assert!(json.len() <= e.json_capacity(), "{} > {}", json.len(), e.json_capacity());
            }
        }

        /// With the maps' own text kept as sent, the envelope is the same; with any text kept, that text is what
        /// the stored envelope holds.
        #[test]
        fn kept_text_is_copied(mut e in event(), reorder in any::<bool>()) {
            let plain = e.to_json();
            let data = serde_json::to_string(&e.data).unwrap();
            let metadata = serde_json::to_string(&e.metadata).unwrap();
            e.data = crate::object::Object::from_checked_text(&data);
            e.metadata = crate::object::Object::from_checked_text(&metadata);
            prop_assert_eq!(e.to_json(), plain);
            // The client's key order and spacing are kept.
            let sent = if reorder { r#"{ "b": 1, "a": [true] }"# } else { "{}" };
            e.data = crate::object::Object::from_checked_text(sent);
            if let Some(stored) = e.to_json() {
                let stored = String::from_utf8(stored).unwrap();
                prop_assert!(stored.contains(&format!(",\"data\":{sent},\"metadata\":{metadata},")), "{}", stored);
            }
        }
    }
}
