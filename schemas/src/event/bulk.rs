//! The bulk body's reader: `{"events": [event, ...]}` in one pass, each event's envelope read here and its `data`
//! and `metadata` checked where they stand, by the reader that checks a part's text ([`Reader`]). When an event
//! gives its type before its `data`, as clients write it, `data` is checked against the type's schema plan as it is
//! read, and a valid event's bytes are read once (a type without a plan, a part the plan cannot decide, and a float
//! written otherwise than serde_json writes it still send the part to a second reading).
//!
//! It takes only events that [`super::parse_text`] takes, with the same drafts (the same stored texts too). It
//! leaves to the item-by-item path, which takes them, only envelope field names written with escapes, which no
//! client writes. Nesting: each part may nest as deep as `parse_text` lets it, so a body whose parts go within two
//! levels of that limit is taken here though serde_json would refuse the body as a whole; the item-by-item path
//! takes it too, and each event, stored on its own, reads back. Property tests hold it to `parse_text`.

use super::{Checked, Envelope, EventDraft, Part};
use crate::catalog::{Catalog, EventType};
use crate::object::{Plan, Reader};

pub(super) fn parse<T>(text: &str, catalog: &Catalog, mut each: impl FnMut(EventDraft) -> T) -> Option<Vec<T>> {
    let mut r = Reader::new(text);
    r.ws();
    r.eat(b'{')?;
    r.ws();
    if r.plain_string()? != "events" {
        return None;
    }
    r.ws();
    r.eat(b':')?;
    r.ws();
    r.eat(b'[')?;
    r.ws();
    let mut out = Vec::new();
    if r.peek()? == b']' {
        r.eat(b']')?;
    } else {
        loop {
            let envelope = envelope(&mut r, catalog)?;
            out.push(each(envelope.check(catalog)?));
            if !r.more(b']')? {
                break;
            }
        }
    }
    r.ws();
    r.eat(b'}')?;
    r.ws();
    r.at_end().then_some(out)
}

/// An optional string: `null` is absent.
fn opt_string<'a>(r: &mut Reader<'a>) -> Option<Option<&'a str>> {
    if r.peek()? == b'n' {
        r.literal(b"null")?;
        return Some(None);
    }
    r.plain_string().map(Some)
}

/// How a part's schema is checked as the part is read.
enum Schema<'p> {
    /// Not here: `metadata`, or `data` before the event type is known.
    Later,
    /// Against the type's plan.
    Plan(&'p Plan),
    /// The type has no plan: jsonschema decides.
    Jsonschema,
}

/// `data` or `metadata`: an object, checked where it stands, or `null` for absent.
fn part<'a>(r: &mut Reader<'a>, schema: Schema<'_>) -> Option<Option<Part<'a>>> {
    if r.peek()? == b'n' {
        r.literal(b"null")?;
        return Some(None);
    }
    let start = r.position();
    let checked = match schema {
        Schema::Later => Checked::Alone(r.part(None)?),
        Schema::Jsonschema => Checked::Unplanned(r.part(None)?),
        Schema::Plan(plan) => match r.part(Some(plan)) {
            Some(floats) => Checked::Planned(floats),
            // Not within the plan (the full path may still take it, through jsonschema): checked alone.
            None => {
                r.rewind(start);
                Checked::Unplanned(r.part(None)?)
            }
        },
    };
    Some(Some(Part { text: r.since(start)?, checked }))
}

/// An event's envelope, from its `{`: only the known fields, each at most once, each of its type. A required field
/// that is `null` is as missing.
fn envelope<'a>(r: &mut Reader<'a>, catalog: &Catalog) -> Option<Envelope<'a>> {
    r.eat(b'{')?;
    r.ws();
    let mut seen = 0u16;
    let (mut id, mut tenant_id, mut event_type, mut source) = (None, None, None, None);
    let (mut action, mut entity_id, mut entity_type) = (None, None, None);
    let (mut data, mut metadata, mut occurred_at, mut correlation_id) = (None, None, None, None);
    // Set by evstream: accepted as strings and overwritten (see `KNOWN_FIELDS`).
    let (mut received_at, mut schema_version) = (None, None);
    let mut type_text = None;
    if r.peek()? == b'}' {
        r.eat(b'}')?;
    } else {
        loop {
            let key = r.plain_string()?;
            r.ws();
            r.eat(b':')?;
            r.ws();
            // Each field's bit, to refuse a repeated one.
            let field: u16 = match key {
                "data" => {
                    let schema = match event_type.map(|t| catalog.plan(t)) {
                        None => Schema::Later,
                        Some(Some(plan)) => Schema::Plan(plan),
                        Some(None) => Schema::Jsonschema,
                    };
                    data = part(r, schema)?;
                    1 << 7
                }
                "metadata" => {
                    metadata = part(r, Schema::Later)?;
                    1 << 8
                }
                _ => {
                    let (field, value) = match key {
                        "id" => (1, &mut id),
                        "tenantId" => (1 << 1, &mut tenant_id),
                        "eventType" => (1 << 2, &mut type_text),
                        "source" => (1 << 3, &mut source),
                        "action" => (1 << 4, &mut action),
                        "entityId" => (1 << 5, &mut entity_id),
                        "entityType" => (1 << 6, &mut entity_type),
                        "occurredAt" => (1 << 9, &mut occurred_at),
                        "correlationId" => (1 << 10, &mut correlation_id),
                        "receivedAt" => (1 << 11, &mut received_at),
                        "schemaVersion" => (1 << 12, &mut schema_version),
                        _ => return None,
                    };
                    *value = opt_string(r)?;
                    field
                }
            };
            if seen & field != 0 {
                return None;
            }
            seen |= field;
            // The type as soon as it is known, for the schema of a `data` that follows.
            if let (Some(text), None) = (type_text, event_type) {
                event_type = Some(EventType::parse(text)?);
            }
            if !r.more(b'}')? {
                break;
            }
        }
    }
    Some(Envelope {
        id,
        tenant_id: tenant_id?,
        event_type: event_type?,
        source: source?,
        action,
        entity_id,
        entity_type,
        data,
        metadata,
        occurred_at,
        correlation_id,
    })
}
