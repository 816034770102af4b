//! The bulk body's reader: `{"events": [event, ...]}` in one pass over the bytes, each event's envelope read
//! here and its `data` and `metadata` checked where they stand (against the type's schema plan when the event
//! type came first, as clients write it), so that no byte of a valid body is read twice.
//!
//! It takes exactly the events that [`super::parse_text`] takes, with the same drafts, and errs only towards
//! "no": an envelope field name or string with an escape, a repeated field, a field of the wrong type, anything
//! but JSON's four whitespace characters between tokens. The body then takes the item-by-item path, which reports
//! what is wrong. Property tests hold it to `parse_text`.

use super::{Envelope, EventDraft, Part};
use crate::catalog::{Catalog, EventType};
use crate::object::{check_part, Plan};
use crate::scan::quote_backslash_or_control;

pub(super) fn parse<T>(text: &str, catalog: &Catalog, mut each: impl FnMut(EventDraft) -> T) -> Option<Vec<T>> {
    let mut c = Cursor { text, b: text.as_bytes(), i: 0 };
    c.ws();
    c.eat(b'{')?;
    c.ws();
    if c.string()? != "events" {
        return None;
    }
    c.ws();
    c.eat(b':')?;
    c.ws();
    c.eat(b'[')?;
    c.ws();
    let mut out = Vec::new();
    if c.peek()? == b']' {
        c.i += 1;
    } else {
        loop {
            let envelope = c.envelope(catalog)?;
            out.push(each(envelope.check(catalog)?));
            if !c.more(b']')? {
                break;
            }
        }
    }
    c.ws();
    c.eat(b'}')?;
    c.ws();
    (c.i == c.b.len()).then_some(out)
}

struct Cursor<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After a member or element: `Some(true)` past a comma (another one follows), `Some(false)` past `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = self.peek()?;
        self.i += 1;
        if c == b',' {
            self.ws();
            Some(true)
        } else {
            (c == close).then_some(false)
        }
    }

    /// A string without escapes or control characters (a control character is not JSON; a string with an escape
    /// is one the fast path leaves to the full parse, as serde's borrowed reading does).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = quote_backslash_or_control(self.b.get(start..)?)?;
        self.i = start + len;
        self.eat(b'"')?;
        // Both ends are next to a quote, an ASCII byte, so on character boundaries.
        self.text.get(start..start + len)
    }

    /// An optional string: `null` is absent.
    fn opt_string(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            self.null()?;
            return Some(None);
        }
        self.string().map(Some)
    }

    fn null(&mut self) -> Option<()> {
        let end = self.i + 4;
        (self.b.get(self.i..end)? == b"null").then(|| self.i = end)
    }

    /// `data` or `metadata`: an object, checked where it stands (against `plan` too, when there is one), or
    /// `null` for absent.
    fn part(&mut self, plan: Option<&Plan>) -> Option<Option<Part<'a>>> {
        let start = self.i;
        if self.peek()? == b'n' {
            self.null()?;
            return Some(None);
        }
        let (floats, end, planned) = match plan.and_then(|p| check_part(self.text, start, Some(p))) {
            Some((floats, end)) => (floats, end, true),
            // Not within the plan (the full path may still take it, through jsonschema): checked alone.
            None => {
                let (floats, end) = check_part(self.text, start, None)?;
                (floats, end, false)
            }
        };
        self.i = end;
        Some(Some(Part { text: self.text.get(start..end)?, floats: Some(floats), planned }))
    }

    /// An event's envelope, from its `{`: only the known fields, each at most once, each of its type.
    fn envelope(&mut self, catalog: &Catalog) -> Option<Envelope<'a>> {
        self.eat(b'{')?;
        self.ws();
        let mut seen = 0u16;
        let (mut id, mut tenant_id, mut event_type, mut source) = (None, None, None, None);
        let (mut action, mut entity_id, mut entity_type) = (None, None, None);
        let (mut data, mut metadata, mut occurred_at, mut correlation_id) = (None, None, None, None);
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                let key = self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                // Each field's bit, to refuse a repeated one.
                let field: u16 = match key {
                    "id" => {
                        id = self.opt_string()?;
                        1
                    }
                    "tenantId" => {
                        tenant_id = Some(self.string()?);
                        1 << 1
                    }
                    "eventType" => {
                        event_type = Some(EventType::parse(self.string()?)?);
                        1 << 2
                    }
                    "source" => {
                        source = Some(self.string()?);
                        1 << 3
                    }
                    "action" => {
                        action = self.opt_string()?;
                        1 << 4
                    }
                    "entityId" => {
                        entity_id = self.opt_string()?;
                        1 << 5
                    }
                    "entityType" => {
                        entity_type = self.opt_string()?;
                        1 << 6
                    }
                    "data" => {
                        data = self.part(event_type.and_then(|t| catalog.plan(t)))?;
                        1 << 7
                    }
                    "metadata" => {
                        metadata = self.part(None)?;
                        1 << 8
                    }
                    "occurredAt" => {
                        occurred_at = self.opt_string()?;
                        1 << 9
                    }
                    "correlationId" => {
                        correlation_id = self.opt_string()?;
                        1 << 10
                    }
                    // Set by evstream: accepted as strings and overwritten (see `KNOWN_FIELDS`).
                    "receivedAt" => {
                        self.opt_string()?;
                        1 << 11
                    }
                    "schemaVersion" => {
                        self.opt_string()?;
                        1 << 12
                    }
                    _ => return None,
                };
                if seen & field != 0 {
                    return None;
                }
                seen |= field;
                if !self.more(b'}')? {
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
}
