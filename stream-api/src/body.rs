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

/// A bulk body of the plain shape `{"events": [item, ...]}`, split into its items' texts without parsing them.
/// `None` when the body is not of that shape, as far as the split can tell; the caller then parses it whole, which
/// says what is wrong. Each item is parsed on its own afterwards, and an item that is not one whole JSON value must
/// send the body to the whole parse too: then the body as a whole is valid JSON exactly when every item is, and the
/// items are exactly the array's elements. (Nesting aside: each item gets serde's whole depth limit, two levels more
/// than it has inside the body, as with the serde pass over the whole body that this replaced, which checked every
/// item's text once before each item was parsed.) The bulk handler first tries one pass that takes a body whose
/// every event is valid (`Pipeline::bulk_documents`), and comes here for any other body.
pub fn split_bulk(b: &[u8]) -> Option<Vec<&[u8]>> {
    // JSON's whitespace, and nothing else.
    let is_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let ws = |i: &mut usize| {
        while b.get(*i).is_some_and(is_ws) {
            *i += 1;
        }
    };
    let mut i = 0;
    for token in [&b"{"[..], b"\"events\"", b":", b"["] {
        ws(&mut i);
        if !b.get(i..)?.starts_with(token) {
            return None;
        }
        i += token.len();
    }
    let mut items = Vec::new();
    ws(&mut i);
    if b.get(i) == Some(&b']') {
        i += 1;
    } else {
        loop {
            ws(&mut i);
            let start = i;
            // The item runs to the first `,` or `]` outside its strings and brackets.
            let mut depth = 0usize;
            let end = loop {
                match *b.get(i)? {
                    b'"' => {
                        // To the closing quote: a backslash escapes the byte after it (in `\uXXXX` the digits are
                        // never a quote or a backslash).
                        i += 1;
                        loop {
                            i += schemas::scan::quote_or_backslash(b.get(i..)?)?;
                            if b[i] == b'"' {
                                break;
                            }
                            i += 2;
                        }
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' | b']' if depth == 0 => break i,
                    b'}' => return None,
                    _ => {}
                }
                i += 1;
            };
            let mut item = &b[start..end];
            while let [rest @ .., last] = item {
                if !is_ws(last) {
                    break;
                }
                item = rest;
            }
            if item.is_empty() {
                return None;
            }
            items.push(item);
            i = end + 1;
            if b[end] == b']' {
                break;
            }
        }
    }
    ws(&mut i);
    if b.get(i) != Some(&b'}') {
        return None;
    }
    i += 1;
    ws(&mut i);
    (i == b.len()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::split_bulk;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    /// The items as serde finds them (the plain shape only), or `None` when serde refuses the body.
    fn serde_split(b: &[u8]) -> Option<Vec<Vec<u8>>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Plain<'a> {
            #[serde(borrow)]
            events: Vec<&'a RawValue>,
        }
        let p: Plain<'_> = serde_json::from_slice(b).ok()?;
        Some(p.events.iter().map(|r| r.get().as_bytes().to_vec()).collect())
    }

    /// Does an item parse on its own as `Pipeline::document` parses it (UTF-8 text, then a whole `Value`)?
    fn item_ok(i: &[u8]) -> bool {
        std::str::from_utf8(i).is_ok_and(|t| serde_json::from_str::<serde_json::Value>(t).is_ok())
    }

    /// What the handler makes of a split: the items, when every one parses on its own; else the whole parse decides.
    fn checked(b: &[u8]) -> Option<Vec<Vec<u8>>> {
        let items = split_bulk(b)?;
        items.iter().all(|i| item_ok(i)).then(|| items.iter().map(|i| i.to_vec()).collect())
    }

    /// The same with serde's split, as the handler did before.
    fn serde_checked(b: &[u8]) -> Option<Vec<Vec<u8>>> {
        serde_split(b).filter(|items| items.iter().all(|i| item_ok(i)))
    }

    /// A split the handler takes must be a body the whole parse takes, with the same items as serde's split.
    fn agrees(b: &[u8]) -> Result<(), TestCaseError> {
        if let Some(split) = checked(b) {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(b).is_ok(), "{}", String::from_utf8_lossy(b));
            prop_assert_eq!(Some(split), serde_split(b));
        }
        Ok(())
    }

    #[test]
    fn plain_bodies_split_into_their_items() {
        let cases: [(&str, Option<Vec<&str>>); 12] = [
            (r#"{"events":[]}"#, Some(vec![])),
            (" {\n \"events\" :\t[ ] } \r\n", Some(vec![])),
            (r#"{"events":[{"a":1},{"b":[1,2,{"c":"]"}]}]}"#, Some(vec![r#"{"a":1}"#, r#"{"b":[1,2,{"c":"]"}]}"#])),
            (
                r#"{"events":[ {"s":"quote \" and \\ and , and ] and }"} , 7 ,"x"]}"#,
                Some(vec![r#"{"s":"quote \" and \\ and , and ] and }"}"#, "7", r#""x""#]),
            ),
            (r#"{"events":[{"a":1},]}"#, None),
            (r#"{"events":[,{"a":1}]}"#, None),
            (r#"{"events":[{"a":1}}]}"#, None),
            (r#"{"events":[{"a":1}]}x"#, None),
            (r#"{"events":[{"a":1}],"more":1}"#, None),
            (r#"{"\u0065vents":[{"a":1}]}"#, None),
            (r#"{"events":[{"a":"unterminated}]}"#, None),
            (r#"["events"]"#, None),
        ];
        for (body, want) in cases {
            let got = split_bulk(body.as_bytes())
                .map(|v| v.iter().map(|i| String::from_utf8_lossy(i).into_owned()).collect::<Vec<_>>());
            assert_eq!(got, want.map(|v| v.into_iter().map(String::from).collect()), "{body}");
        }
    }

    /// JSON text of bulk bodies: nested values with strings full of the bytes the split looks for, and whitespace
    /// anywhere JSON allows it.
    fn value() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]);
        let string = "[a-z\"\\\\,\\[\\]{}: é😀\u{1}]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default());
        // Escapes serde never writes, a string ending in a backslash, numbers out of range, a lone surrogate.
        let odd = prop::sample::select(vec![
            r#""\/\n\t\u00e9\uD83D\uDE00""#,
            r#""ends in \\""#,
            r#""\\\"]""#,
            "1e400",
            r#""\ud800""#,
            "true",
            "false",
        ])
        .prop_map(str::to_string);
        let leaf =
            prop_oneof![string, odd, Just("12".to_string()), Just("-1.5e3".to_string()), Just("null".to_string())];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                prop::collection::vec((inner.clone(), ws.clone()), 0..4).prop_map(|v| format!(
                    "[{}]",
                    v.into_iter().map(|(x, w)| format!("{w}{x}{w}")).collect::<Vec<_>>().join(",")
                )),
                prop::collection::vec(("[a-z\"]{0,3}", inner, ws), 0..4).prop_map(|v| format!(
                    "{{{}}}",
                    v.into_iter()
                        .map(|(k, x, w)| format!("{w}{}{w}:{w}{x}", serde_json::to_string(&k).unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Generated bodies: the handler takes the same bodies, with the same items, as with serde's split.
        #[test]
        fn same_items_as_serde(items in prop::collection::vec(value(), 0..6), w in "[ \n\t]{0,2}") {
            let body = format!("{w}{{{w}\"events\"{w}:{w}[{w}{}{w}]{w}}}{w}", items.join(&format!("{w},{w}")));
            prop_assert_eq!(checked(body.as_bytes()), serde_checked(body.as_bytes()));
        }

        /// Altered bodies (a byte replaced, inserted or removed, anywhere, any value; or cut): whatever the split
        /// accepts (with every item parsing on its own) the whole parse accepts too, with the same items.
        #[test]
        fn never_accepts_what_serde_refuses(
            items in prop::collection::vec(value(), 1..4),
            w in "[ \n]{0,1}",
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let body = format!("{{{w}\"events\"{w}:[{w}{}{w}]{w}}}", items.join(&format!("{w},")));
            let b = body.into_bytes();
            let at = at.index(b.len());
            let mut replaced = b.clone();
            replaced[at] = byte;
            agrees(&replaced)?;
            let mut inserted = b.clone();
            inserted.insert(at, byte);
            agrees(&inserted)?;
            let mut removed = b.clone();
            removed.remove(at);
            agrees(&removed)?;
            agrees(&b[..at])?;
        }
    }
}
