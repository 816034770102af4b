//! An event's `data` and `metadata`: [`Object`], and the check that lets a valid part stay as the text the client
//! sent instead of becoming a map on the ingest path.
//!
//! [`check_text`] reads a part's text once and checks, without building anything, what the full path checks with a
//! map: a JSON object, no repeated key at any depth, none of serde_json's reserved keys, the nesting limit, and for
//! `data` its type's JSON Schema, where the schema is simple enough for a [`Plan`] (types, string lengths, numeric
//! bounds, string enums, required properties). It may only err on the safe side: when it cannot tell (a property
//! whose schema it does not know how to check, a number it cannot compare exactly) it answers "no", and the caller
//! takes the full path, where jsonschema decides and reports. A test holds the two paths together.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

/// A JSON object: `data` or `metadata` of an event. Held as a map, or as the client's text when the parser found
/// that text fit to be stored as sent (it holds the same values as the map, for every reader). The map is then
/// read from the text the first time something looks inside: a condition on a field, or code that reads it.
#[derive(Default)]
pub struct Object {
    text: Option<Box<str>>,
    map: OnceLock<Map<String, Value>>,
}

impl Object {
    /// A part whose text has been checked and may be stored as sent.
    pub(crate) fn from_checked_text(text: &str) -> Self {
        Self { text: Some(text.into()), map: OnceLock::new() }
    }

    /// A part read into `map` whose text may also be stored as sent.
    pub(crate) fn with_text(map: Map<String, Value>, text: &str) -> Self {
        Self { text: Some(text.into()), map: OnceLock::from(map) }
    }

    /// The text to store, when the client's text may be stored as it is.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The object as a map.
    pub fn map(&self) -> &Map<String, Value> {
        // The text was checked to be an object before it was kept, so it always reads back.
        self.map.get_or_init(|| self.text.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default())
    }

    /// A part whose text [`check_text`] found valid, with what it saw of the floats: kept as that text unless one
    /// of its floats is written otherwise than serde_json writes the value it read, else as the map. `map`: the
    /// part already read, when the caller read it.
    pub(crate) fn checked(text: &str, floats: Floats, map: Option<Map<String, Value>>) -> Option<Self> {
        Some(match (!floats.rewritten, map) {
            (true, Some(map)) => Object::with_text(map, text),
            (true, None) => Object::from_checked_text(text),
            (false, Some(map)) => Object::from(map),
            (false, None) => Object::from(serde_json::from_str::<Map<String, Value>>(text).ok()?),
        })
    }
}

impl From<Map<String, Value>> for Object {
    fn from(map: Map<String, Value>) -> Self {
        Self { text: None, map: OnceLock::from(map) }
    }
}

impl std::ops::Deref for Object {
    type Target = Map<String, Value>;
    fn deref(&self) -> &Map<String, Value> {
        self.map()
    }
}

impl Clone for Object {
    fn clone(&self) -> Self {
        Self { text: self.text.clone(), map: self.map.clone() }
    }
}

impl PartialEq for Object {
    fn eq(&self, other: &Self) -> bool {
        self.map() == other.map()
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map().fmt(f)
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Map::deserialize(d).map(Object::from)
    }
}

/// How to check a type's `data` schema from text: present when every keyword at the top is one this knows
/// (`type: object`, `properties`, `required`, `additionalProperties: true`, annotations).
#[derive(Debug)]
pub struct Plan {
    properties: BTreeMap<String, Property>,
    required: Vec<String>,
}

#[derive(Debug)]
enum Property {
    Simple(Simple),
    /// A keyword this does not check (`pattern`, `anyOf`, `items`, ...): an instance with this
    /// property takes the full path.
    Unknown,
}

#[derive(Debug, Default)]
struct Simple {
    /// The JSON types allowed (bits of the `T_*` constants).
    types: u8,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    one_of: Option<Vec<String>>,
}

const T_NULL: u8 = 1;
const T_BOOLEAN: u8 = 2;
const T_INTEGER: u8 = 4;
const T_NUMBER: u8 = 8;
const T_STRING: u8 = 16;
const T_ARRAY: u8 = 32;
const T_OBJECT: u8 = 64;
const T_ANY: u8 = 127;

/// Keywords that only annotate,
/// `format` among them (jsonschema's draft 2020-12 validator only annotates with it unless told to assert it, and
/// the catalog does not tell it to; a test holds that: a `format` property with any string passes both paths).
const ANNOTATIONS: &[&str] = &["$schema", "$id", "$comment", "title", "description", "examples", "default", "format"];

/// 2^53: integers below it in magnitude are exact as `f64`, so comparing them as `f64` is exact too.
const EXACT: f64 = 9_007_199_254_740_992.0;

impl Plan {
    /// The plan for a `data` schema, `None` when its top level uses a keyword this does not check.
    pub fn of(schema: &Value) -> Option<Plan> {
        let s = schema.as_object()?;
        let mut plan = Plan { properties: BTreeMap::new(), required: Vec::new() };
        for (k, v) in s {
            match k.as_str() {
                "type" if v == "object" => {}
                "additionalProperties" if v == &Value::Bool(true) => {}
                "properties" => {
                    for (name, sub) in v.as_object()? {
                        plan.properties
                            .insert(name.clone(), Simple::of(sub).map_or(Property::Unknown, Property::Simple));
                    }
                }
                "required" => {
                    for r in v.as_array()? {
                        plan.required.push(r.as_str()?.to_string());
                    }
                }
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        Some(plan)
    }
}

impl Simple {
    fn of(schema: &Value) -> Option<Simple> {
        let s = schema.as_object()?;
        let mut out = Simple { types: T_ANY, ..Simple::default() };
        let length = |v: &Value| v.as_u64();
        // A bound is compared as `f64`: only one that is exactly an `f64` below 2^53 in magnitude (an integer
        // bound is judged before any rounding).
        let bound = |v: &Value| match v {
            Value::Number(n) if n.is_f64() => n.as_f64().filter(|f| f.abs() < EXACT),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (i.unsigned_abs() < 1 << 53).then_some(i as f64),
                (_, Some(u)) => (u < 1 << 53).then_some(u as f64),
                _ => None,
            },
            _ => None,
        };
        for (k, v) in s {
            match k.as_str() {
                "type" => {
                    out.types = match v {
                        Value::String(t) => type_bit(t)?,
                        Value::Array(ts) => ts.iter().try_fold(0, |acc, t| Some(acc | type_bit(t.as_str()?)?))?,
                        _ => return None,
                    }
                }
                "minLength" => out.min_length = Some(length(v)?),
                "maxLength" => out.max_length = Some(length(v)?),
                "minimum" => out.minimum = Some(bound(v)?),
                "maximum" => out.maximum = Some(bound(v)?),
                "enum" => {
                    let all =
                        v.as_array()?.iter().map(|e| e.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()?;
                    out.one_of = Some(all);
                }
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        Some(out)
    }

    /// Is a JSON number `n` (an integer when `integer`) valid here? `None`: cannot tell exactly.
    fn number(&self, n: f64, integer: bool) -> Option<bool> {
        let typed = self.types & T_NUMBER != 0 || (integer && self.types & T_INTEGER != 0);
        if !typed || self.one_of.is_some() {
            // A float with no fraction is an integer to JSON Schema; leave that case to the full path.
            return if !integer && self.types & T_INTEGER != 0 && n.fract() == 0.0 { None } else { Some(false) };
        }
        // An integer was read into `n` as `f64`: exact only below 2^53 in magnitude (2^53 + 1 reads as 2^53).
        if (self.minimum.is_some() || self.maximum.is_some()) && integer && n.abs() >= EXACT {
            return None;
        }
        Some(self.minimum.is_none_or(|m| n >= m) && self.maximum.is_none_or(|m| n <= m))
    }

    fn string(&self, s: &str) -> bool {
        if self.types & T_STRING == 0 {
            return false;
        }
        if self.min_length.is_some() || self.max_length.is_some() {
            let n = s.chars().count() as u64;
            if self.min_length.is_some_and(|m| n < m) || self.max_length.is_some_and(|m| n > m) {
                return false;
            }
        }
        self.one_of.as_ref().is_none_or(|all| all.iter().any(|e| e == s))
    }

    /// A value of a type with no keyword but `type` that applies to it (null, boolean, array, object).
    fn only_type(&self, bit: u8) -> bool {
        self.types & bit != 0 && self.one_of.is_none()
    }
}

fn type_bit(t: &str) -> Option<u8> {
    Some(match t {
        "null" => T_NULL,
        "boolean" => T_BOOLEAN,
        "integer" => T_INTEGER,
        "number" => T_NUMBER,
        "string" => T_STRING,
        "array" => T_ARRAY,
        "object" => T_OBJECT,
        _ => return None,
    })
}

/// What [`check_text`] saw of a valid part's floats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Floats {
    /// A float written otherwise than serde_json writes the value it read (`1E2`, `5.00`): the part cannot be
    /// stored as sent.
    pub rewritten: bool,
}

/// Checks the text of a part (see the module doc): `Some` when it is a valid object, `None` when it is not or
/// when this cannot tell. `plan`: the schema of `data`; `None` checks the object alone.
///
/// A reader of its own, one pass over the bytes: it accepts exactly the JSON text serde_json reads from a `&str`
/// (whitespace, literals, the number grammar, strings without control characters, escapes with paired
/// surrogates), reads numbers to the same values (serde_json's `float_roundtrip` and the standard library both
/// round correctly), and sees each number where it stands, so every float is compared with serde_json's writing
/// of it. The map-building reader of the tests is its reference.
pub(crate) fn check_text(text: &str, plan: Option<&Plan>) -> Option<Floats> {
    let mut r = Reader::new(text);
    r.ws();
    let floats = r.part(plan)?;
    r.ws();
    (r.i == r.b.len()).then_some(floats)
}

/// How deep a part may nest: serde_json reads at most 127 levels, and the envelope is one of them.
pub(crate) const LEVELS: u32 = 126;

/// Where [`check_text`] is in the text, and whether it has seen a float written otherwise than serde_json writes it.
/// The bulk body's reader (`event::bulk`) reads its envelopes with it too.
pub(crate) struct Reader<'t> {
    text: &'t str,
    b: &'t [u8],
    i: usize,
    rewritten: bool,
}

impl<'t> Reader<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Reader { text, b: text.as_bytes(), i: 0, rewritten: false }
    }

    pub(crate) fn position(&self) -> usize {
        self.i
    }

    /// Back to an earlier position.
    pub(crate) fn rewind(&mut self, to: usize) {
        self.i = to;
    }

    /// The text from `start` to the current position.
    pub(crate) fn since(&self, start: usize) -> Option<&'t str> {
        self.text.get(start..self.i)
    }

    /// Whether the whole text has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.i == self.b.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// JSON's whitespace (serde_json's too): space, tab, line feed, carriage return.
    pub(crate) fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    pub(crate) fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    pub(crate) fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A part (`data`, `metadata`): the object that opens here, checked as [`check_text`] checks a whole text.
    /// What it found of the floats; on `None` the position is wherever the check stopped.
    pub(crate) fn part(&mut self, plan: Option<&Plan>) -> Option<Floats> {
        if self.peek()? != b'{' {
            return None;
        }
        self.rewritten = false;
        self.object(LEVELS, plan)?;
        Some(Floats { rewritten: self.rewritten })
    }

    /// A string without escapes, borrowed from the text; `None` for one with an escape or a control character,
    /// or for anything but a string.
    pub(crate) fn plain_string(&mut self) -> Option<&'t str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let end = start + crate::scan::quote_backslash_or_control(self.b.get(start..)?)?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        // Both ends are next to a quote, an ASCII byte, so on character boundaries.
        self.text.get(start..end)
    }

    /// A value, checked against `schema` when it is a member of `data` with one. `levels`: how many more arrays
    /// and objects may open (an array or object needs one).
    fn value(&mut self, levels: u32, schema: Option<&Simple>) -> Option<()> {
        let only = |bit| schema.is_none_or(|s| s.only_type(bit));
        match self.peek()? {
            b'{' => {
                only(T_OBJECT).then_some(())?;
                self.object(levels, None)
            }
            b'[' => {
                only(T_ARRAY).then_some(())?;
                self.array(levels)
            }
            b'"' => {
                let s = self.string()?;
                schema.is_none_or(|schema| schema.string(&s)).then_some(())
            }
            b't' => {
                self.literal(b"true")?;
                only(T_BOOLEAN).then_some(())
            }
            b'f' => {
                self.literal(b"false")?;
                only(T_BOOLEAN).then_some(())
            }
            b'n' => {
                self.literal(b"null")?;
                only(T_NULL).then_some(())
            }
            b'-' | b'0'..=b'9' => {
                let (n, integer) = self.number()?;
                match schema {
                    Some(s) => s.number(n, integer)?.then_some(()),
                    None => Some(()),
                }
            }
            _ => None,
        }
    }

    /// An object, from its `{`: no repeated key, none of serde_json's reserved keys; with `plan` (the top of
    /// `data`), each member checked against its property's schema, and the required ones present.
    fn object(&mut self, levels: u32, plan: Option<&Plan>) -> Option<()> {
        let inner = levels.checked_sub(1)?;
        self.i += 1;
        self.ws();
        let mut keys = Keys::new();
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                if self.peek()? != b'"' {
                    return None;
                }
                let k = self.string()?;
                if k.starts_with("$serde_json::private::") {
                    return None;
                }
                self.ws();
                self.eat(b':')?;
                self.ws();
                let schema = match plan.map(|p| p.properties.get(k.as_ref())) {
                    None | Some(None) => None,
                    Some(Some(Property::Simple(s))) => Some(s),
                    // A property checked by the full path.
                    Some(Some(Property::Unknown)) => return None,
                };
                self.value(inner, schema)?;
                keys.add(k)?;
                if !self.more(b'}')? {
                    break;
                }
            }
        }
        if let Some(plan) = plan {
            plan.required.iter().all(|r| keys.contains(r)).then_some(())?;
        }
        keys.distinct()
    }

    /// An array, from its `[`.
    fn array(&mut self, levels: u32) -> Option<()> {
        let inner = levels.checked_sub(1)?;
        self.i += 1;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.value(inner, None)?;
            if !self.more(b']')? {
                return Some(());
            }
        }
    }

    /// After a member or element: `Some(true)` past a comma (another one follows), `Some(false)` past `close`.
    pub(crate) fn more(&mut self, close: u8) -> Option<bool> {
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

    /// A string, from its opening quote: borrowed from the text unless it has escapes.
    fn string(&mut self) -> Option<Cow<'t, str>> {
        self.i += 1;
        let start = self.i;
        let at = crate::scan::quote_backslash_or_control(&self.b[start..])?;
        self.i = start + at;
        if self.b[self.i] == b'"' {
            self.i += 1;
            return Some(Cow::Borrowed(&self.text[start..start + at]));
        }
        // Escapes (or a control character, refused below): decoded as serde_json decodes them.
        let mut out = String::from(&self.text[start..self.i]);
        loop {
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    let c = self.peek()?;
                    self.i += 1;
                    out.push(match c {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    });
                }
                _ => return None,
            }
            let from = self.i;
            let at = crate::scan::quote_backslash_or_control(&self.b[from..])?;
            self.i = from + at;
            out.push_str(&self.text[from..self.i]);
        }
    }

    /// The character of a `\u` escape, after its `u`: a surrogate must be a leading one followed by a trailing
    /// one (serde_json refuses lone surrogates in a string).
    fn unicode_escape(&mut self) -> Option<char> {
        let n = self.hex4()?;
        match n {
            0xDC00..=0xDFFF => None,
            0xD800..=0xDBFF => {
                self.literal(b"\\u")?;
                let n2 = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&n2) {
                    return None;
                }
                char::from_u32((((n - 0xD800) << 10) | (n2 - 0xDC00)) + 0x1_0000)
            }
            n => char::from_u32(n),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut n = 0;
        for d in digits {
            n = n * 16 + char::from(*d).to_digit(16)?;
        }
        self.i += 4;
        Some(n)
    }

    /// A number, read as serde_json reads it: the value, and whether it is an integer (`i64` or `u64`; `-0` and
    /// integers beyond both are floats). A float is compared with serde_json's writing of it.
    fn number(&mut self) -> Option<(f64, bool)> {
        let start = self.i;
        let b = self.b;
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let negative = b[self.i] == b'-';
        let mut i = start + usize::from(negative);
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits(i),
            _ => return None,
        }
        let int_end = i;
        if b.get(i) == Some(&b'.') {
            let from = i + 1;
            i = digits(from);
            if i == from {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let from = i;
            i = digits(from);
            if i == from {
                return None;
            }
        }
        self.i = i;
        let token = &self.text[start..i];
        if i == int_end {
            // No fraction, no exponent: an integer if it fits (at most 20 digits, so the fold cannot overflow
            // `u128`).
            let magnitude = &self.text[start + usize::from(negative)..i];
            if magnitude.len() <= 20 {
                let m = magnitude.bytes().fold(0u128, |m, d| m * 10 + u128::from(d - b'0'));
                match negative {
                    false if m <= u128::from(u64::MAX) => return Some((m as u64 as f64, true)),
                    true if m != 0 && m <= 1 << 63 => return Some(((m as i128).wrapping_neg() as i64 as f64, true)),
                    _ => {}
                }
            }
        }
        let n: f64 = token.parse().ok()?;
        // serde_json refuses a number too large for `f64`.
        if !n.is_finite() {
            return None;
        }
        if !written_as_serde(n, token) {
            self.rewritten = true;
        }
        Some((n, false))
    }
}

/// Is `token` what serde_json writes for the float `n`?
pub(crate) fn written_as_serde(n: f64, token: &str) -> bool {
    let mut buf = [0u8; 32];
    let mut rest = &mut buf[..];
    if serde_json::to_writer(&mut rest, &n).is_err() {
        return false;
    }
    let len = 32 - rest.len();
    &buf[..len] == token.as_bytes()
}

/// An object's keys, to refuse a repeated one: the first few compared one by one as they come, without
/// allocating; past them (or a key with escapes), sorted at the end.
struct Keys<'t> {
    few: [&'t str; FEW_KEYS],
    n: usize,
    more: Vec<Cow<'t, str>>,
}

const FEW_KEYS: usize = 8;

impl<'t> Keys<'t> {
    fn new() -> Self {
        Keys { few: [""; FEW_KEYS], n: 0, more: Vec::new() }
    }

    /// `None` for a key already seen among the first few.
    fn add(&mut self, k: Cow<'t, str>) -> Option<()> {
        match k {
            Cow::Borrowed(b) if self.n < FEW_KEYS && self.more.is_empty() => {
                if self.few[..self.n].contains(&b) {
                    return None;
                }
                self.few[self.n] = b;
                self.n += 1;
            }
            k => self.more.push(k),
        }
        Some(())
    }

    fn contains(&self, key: &str) -> bool {
        self.few[..self.n].contains(&key) || self.more.iter().any(|k| k == key)
    }

    /// `None` when a key repeats.
    fn distinct(self) -> Option<()> {
        if self.more.is_empty() {
            return Some(());
        }
        let mut all = self.more;
        all.extend(self.few[..self.n].iter().map(|k| Cow::Borrowed(*k)));
        all.sort_unstable();
        all.windows(2).all(|w| w[0] != w[1]).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every number in the JSON text `text` is written as serde_json writes the value it reads: an integer
    /// within `i64` or `u64`, or a float in serde's shortest form. The schema checked the value serde read; a reader
    /// that keeps numbers exact (a decimal type) must find that same value in the stored text, not
    /// `100.00000000000000001` where `100.0` was checked against a maximum of 100.
    fn numbers_as_serde_writes(text: &str) -> bool {
        let b = text.as_bytes();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'"' => {
                    // To the closing quote; a backslash escapes the byte after it.
                    i += 1;
                    loop {
                        let Some(at) = b.get(i..).and_then(crate::scan::quote_or_backslash) else { return false };
                        i += at;
                        if b[i] == b'"' {
                            break;
                        }
                        i += 2;
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while b.get(i).is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                        i += 1;
                    }
                    if !number_as_serde_writes(&text[start..i]) {
                        return false;
                    }
                }
                _ => i += 1,
            }
        }
        true
    }

    fn number_as_serde_writes(token: &str) -> bool {
        if !token.contains(['.', 'e', 'E']) {
            // serde_json reads `-0` as the float -0.0, which it writes as `-0.0`.
            return token != "-0" && (token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok());
        }
        token.parse::<f64>().is_ok_and(|n| n.is_finite() && written_as_serde(n, token))
    }

    use crate::catalog::{Catalog, EventType};
    use serde::de::DeserializeSeed;

    /// The reference for [`check_text`]: a JSON object's text read into a map, `None` unless it is an object
    /// without a repeated key at any depth, without serde_json's reserved keys, and nested no deeper than
    /// [`LEVELS`]. It builds the map as it reads, independently of the text check.
    fn strict_object(text: &str) -> Option<Map<String, Value>> {
        let mut d = serde_json::Deserializer::from_str(text);
        let v = Strict { levels: LEVELS }.deserialize(&mut d).ok()?;
        d.end().ok()?;
        match v {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// A JSON value read as serde_json's `Value` reads it from text, except that a repeated object key is an error, and
    /// so are serde_json's reserved keys (with which its `Value` reads a string as JSON text) and an array or object
    /// nested more than `levels` deep.
    #[derive(Clone, Copy)]
    struct Strict {
        levels: u32,
    }

    impl Strict {
        fn inner<E: serde::de::Error>(self) -> Result<Strict, E> {
            match self.levels.checked_sub(1) {
                Some(levels) => Ok(Strict { levels }),
                None => Err(E::custom("nested too deeply")),
            }
        }
    }

    impl<'de> serde::de::DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> serde::de::Visitor<'de> for Strict {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
            Ok(Value::Bool(b))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
            Ok(Value::Number(n.into()))
        }
        fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
            Ok(Value::Number(n.into()))
        }
        fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, s: &str) -> Result<Value, E> {
            Ok(Value::String(s.to_owned()))
        }
        fn visit_string<E>(self, s: String) -> Result<Value, E> {
            Ok(Value::String(s))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let inner = self.inner()?;
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(inner)? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let inner = self.inner()?;
            let mut out = Map::new();
            while let Some(k) = map.next_key::<String>()? {
                if k.starts_with("$serde_json::private::") {
                    return Err(serde::de::Error::custom("serde_json's reserved key"));
                }
                let v = map.next_value_seed(inner)?;
                if out.insert(k, v).is_some() {
                    return Err(serde::de::Error::custom("repeated key"));
                }
            }
            Ok(Value::Object(out))
        }
    }

    /// A small deterministic generator (xorshift), so that a failure names its seed.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, all: &[&'a str]) -> &'a str {
            all[self.below(all.len())]
        }
    }

    const NUMBERS: &[&str] = &[
        "0",
        "1",
        "-1",
        "5",
        "-0",
        "0.0",
        "-0.0",
        "0.5",
        "1.0",
        "99",
        "99.9",
        "100",
        "100.0",
        "100.5",
        "101",
        "1e2",
        "1E2",
        "1e400",
        "-1e-400",
        "9007199254740993",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "5.00",
        "1e-7",
    ];
    const STRINGS: &[&str] = &[
        r#""""#,
        r#""x""#,
        r#""high""#,
        r#""critical""#,
        r#""HIGH""#,
        r#""info""#,
        r#""open""#,
        r#""é""#,
        r#""\u00e9""#,
        r#""a\"b""#,
        r#""2026-01-31""#,
        r#""not a date""#,
        r#""\ud83d\ude00""#,
    ];

    fn value(g: &mut Gen, depth: u32) -> String {
        match g.below(if depth > 2 { 4 } else { 7 }) {
            0 => g.pick(NUMBERS).to_string(),
            1 => g.pick(STRINGS).to_string(),
            2 => g.pick(&["true", "false", "null"]).to_string(),
            3 => g.pick(NUMBERS).to_string(),
            4 => format!("[{}]", (0..g.below(3)).map(|_| value(g, depth + 1)).collect::<Vec<_>>().join(",")),
            _ => object(g, &["a", "b", "$serde_json::private::RawValue"], depth + 1),
        }
    }

    /// An object of some of `keys`: now and then a key's first letter escaped (`\u0061bc`), more members than
    /// fit the first few, and spacing around the colon.
    fn object(g: &mut Gen, keys: &[&str], depth: u32) -> String {
        let n = if g.below(8) == 0 { 9 + g.below(5) } else { g.below(6) };
        let members: Vec<String> = (0..n)
            .map(|_| {
                let k = g.pick(keys);
                let key = match k.chars().next() {
                    Some(c) if c.is_ascii_alphabetic() && g.below(6) == 0 => format!("\\u{:04x}{}", c as u32, &k[1..]),
                    _ => k.to_string(),
                };
                let colon = g.pick(&[": ", ":", " :\t"]);
                format!("\"{key}\"{colon}{}", value(g, depth))
            })
            .collect();
        format!("{{{}}}", members.join(","))
    }

    /// The text check accepts only what the full path accepts (strict read, then jsonschema), and takes every
    /// valid part whose properties it knows how to check and whose numbers it can compare.
    #[test]
    fn text_check_agrees_with_the_full_path() {
        let catalog = Catalog::new();
        let mut taken = 0;
        for t in EventType::ALL {
            let schema: Value = serde_json::from_str(catalog.schema(*t)).unwrap();
            // Every type of the catalog takes the text check today; a schema with a new top-level keyword would
            // send all of its type's events to the full path.
            let Some(plan) = catalog.plan(*t) else { panic!("{t}: no text check for this schema") };
            let mut keys: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
            keys.extend(["custom", "x"]);
            for seed in 1..=3_000u64 {
                let mut g = Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let text = object(&mut g, &keys, 0);
                let full = strict_object(&text).is_some_and(|m| catalog.validate_data(*t, &Value::Object(m)).is_ok());
                let fast = check_text(&text, Some(plan));
                assert!(fast.is_none() || full, "{t}: the text check took what jsonschema refuses: {text}");
                // Kept as sent exactly when every number is written as serde_json writes it.
                if let Some(f) = fast {
                    let kept = !f.rewritten;
                    assert_eq!(kept, numbers_as_serde_writes(&text), "{t}: {text}");
                }
                // What the text check may leave to the full path: a property it does not check, a float where
                // an integer may be, a number beyond 2^53 against a bound.
                let present: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
                let unknown =
                    plan.properties.iter().any(|(k, p)| matches!(p, Property::Unknown) && present.contains_key(k));
                let hard = [
                    "1e2",
                    "1E2",
                    "1.0",
                    "0.0",
                    "100.0",
                    "5.00",
                    "e-400",
                    "-0",
                    "9007199254740993",
                    "1844674407370955161",
                ]
                .iter()
                .any(|n| text.contains(n));
                if full && !unknown && !hard {
                    assert!(fast.is_some(), "{t}: a valid part left to the full path: {text}");
                }
                taken += usize::from(fast.is_some());
            }
        }
        assert!(taken > 1_000, "the text check took only {taken} parts");
    }

    /// Bounds and integers at 2^53 and beyond are left to jsonschema: as `f64` they would round.
    #[test]
    fn bounds_near_two_to_the_53rd() {
        let cases = [
            (r#"{"type":"integer","maximum":9007199254740992}"#, "9007199254740993"),
            (r#"{"type":"integer","minimum":-9007199254740992}"#, "-9007199254740993"),
            (r#"{"type":"number","maximum":9007199254740992}"#, "9007199254740993"),
            (r#"{"type":"integer","minimum":9007199254740993}"#, "9007199254740992"),
            (r#"{"type":"number","minimum":9007199254740993}"#, "9007199254740992.0"),
            (r#"{"type":"number","maximum":1e300}"#, "1e301"),
        ];
        for (property, n) in cases {
            let schema: Value =
                serde_json::from_str(&format!(r#"{{"type":"object","properties":{{"n":{property}}}}}"#)).unwrap();
            let validator = jsonschema::draft202012::new(&schema).unwrap();
            let text = format!(r#"{{"n":{n}}}"#);
            let instance: Value = serde_json::from_str(&text).unwrap();
            let fast = Plan::of(&schema).and_then(|p| check_text(&text, Some(&p)));
            assert!(fast.is_none() || validator.is_valid(&instance), "{property} {n}");
        }
        // Below 2^53 the text check decides, as jsonschema does.
        let schema =
            serde_json::json!({"type":"object","properties":{"n":{"type":"integer","maximum":9007199254740991_u64}}});
        let plan = Plan::of(&schema).unwrap();
        assert!(check_text(r#"{"n":9007199254740991}"#, Some(&plan)).is_some());
        assert!(check_text(r#"{"n":9007199254740990}"#, Some(&plan)).is_some());
    }

    /// Without a schema (`metadata`), the text check and the strict read agree exactly.
    #[test]
    fn object_check_is_the_strict_read() {
        for seed in 1..=5_000u64 {
            let mut g = Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let text = object(&mut g, &["a", "b", "c", "$serde_json::private::Number"], 0);
            assert_eq!(check_text(&text, None).is_some(), strict_object(&text).is_some(), "{text}");
        }
        for text in ["[]", "1", "\"x\"", "{} x", "{\"a\":1,\"a\":1}", "{\"a\":{\"b\":[{\"c\":1,\"c\":2}]}}"] {
            assert_eq!(check_text(text, None), None, "{text}");
        }
        // Past the first few keys, and keys with escapes, are compared too.
        let many = |last: &str| {
            format!("{{{}, \"{last}\": 0}}", (0..12).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(","))
        };
        assert!(check_text(&many("k12"), None).is_some());
        for repeated in ["k0", "k7", "k11"] {
            assert_eq!(check_text(&many(repeated), None), None, "{repeated}");
        }
        assert_eq!(check_text(r#"{"a":1,"\u0061":2}"#, None), None);
        assert_eq!(check_text(r#"{"\u0061":1,"b":2,"a":3}"#, None), None);
    }

    /// The reader accepts exactly the text serde_json reads, and keeps a part as sent exactly when every number
    /// in it is written as serde_json writes it: edge cases of the grammar, then generated parts changed a piece
    /// at a time (brackets, quotes, escapes, surrogates, control characters, number pieces inserted, deleted or
    /// swapped in).
    #[test]
    fn reader_accepts_what_serde_json_reads() {
        let same = |text: &str| {
            let fast = check_text(text, None);
            assert_eq!(fast.is_some(), strict_object(text).is_some(), "{text:?}");
            if let Some(f) = fast {
                assert_eq!(!f.rewritten, numbers_as_serde_writes(text), "{text:?}");
            }
            fast.is_some()
        };
        for text in [
            "{}",
            " {} ",
            "\t{\n}\r\n",
            "{\"a\":1}",
            "{\"a\":-0}",
            "{\"a\":-0.0}",
            "{\"a\":0.5e-3}",
            "{\"a\":1E+2}",
            "{\"a\":18446744073709551615}",
            "{\"a\":18446744073709551616}",
            "{\"a\":-9223372036854775808}",
            "{\"a\":-9223372036854775809}",
            "{\"a\":123456789012345678901234567890}",
            "{\"a\":-1e-400}",
            "{\"a\":\"\\ud83d\\ude00\"}",
            "{\"a\":\"\\u00e9\\/\\b\\f\\n\\r\\t\\\"\\\\\"}",
            "{\"a\":\"\u{7f}é\"}",
            "{\"a\":[[],{},[{}]]}",
            "{\"\\u0061\":1,\"b\":2}",
        ] {
            assert!(same(text), "{text:?} is valid JSON");
        }
        for text in [
            "",
            "{",
            "}",
            "{}}",
            "{} {}",
            "{}\u{c}",
            "[]",
            "{\"a\"}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":[1,]}",
            "{\"a\":[,1]}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":1e}",
            "{\"a\":1e+}",
            "{\"a\":1e400}",
            "{\"a\":-1e400}",
            "{\"a\":0x1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":True}",
            "{\"a\":NaN}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"\\ud800\\n\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\n\"}",
            "{\"a\":\"x}",
            "{a:1}",
            "{'a':1}",
            "{\"a\":1\u{a0}}",
            "{\"a\":1,\"a\":2}",
            "{\"a\":1,\"\\u0061\":2}",
        ] {
            assert!(!same(text), "{text:?} is not valid JSON, or repeats a key");
        }
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\",
            " ",
            "\t",
            "\n",
            "\u{1}",
            "\u{c}",
            "é",
            "0",
            "1",
            "9",
            "-",
            "+",
            ".",
            "e",
            "E",
            "t",
            "n",
            "u",
            "a",
            "\\u",
            "d83d",
            "\\ude00",
            "dc00",
            "0061",
            "null",
            "true",
            "1e400",
            "\"a\":",
            "$serde_json::private::",
        ];
        let mut valid = 0;
        for seed in 1..=20_000u64 {
            let mut g = Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut text = object(&mut g, &["a", "b", "c"], 0);
            for _ in 0..=g.below(3) {
                let at: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                let i = at[g.below(at.len())];
                match g.below(3) {
                    0 => text.insert_str(i, g.pick(&pieces)),
                    1 if i < text.len() => {
                        text.remove(i);
                    }
                    _ if i < text.len() => {
                        text.remove(i);
                        text.insert_str(i, g.pick(&pieces));
                    }
                    _ => {}
                }
            }
            valid += usize::from(same(&text));
        }
        // Enough of the changed parts are still valid for the comparison to mean something both ways.
        assert!(valid > 500, "only {valid} changed parts were valid");
    }

    /// A kept text reads back as the map it holds.
    #[test]
    fn kept_text_reads_back() {
        let o = Object::from_checked_text(r#"{ "b": 1, "a": [true] }"#);
        assert_eq!(o.text(), Some(r#"{ "b": 1, "a": [true] }"#));
        assert_eq!(o["b"], 1);
        assert_eq!(o.map().clone(), serde_json::json!({"a": [true], "b": 1}).as_object().unwrap().clone());
        assert_eq!(Object::from(Map::new()).text(), None);
    }
}
