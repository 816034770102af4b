//! `POST /events`, `POST /events/bulk`, `GET /events/{tenant}`, `GET /events/{tenant}/stream`.

use crate::auth::Auth;
use crate::body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use producer::sinks::redis_stream::ReadFilter;
use producer::{Document, ItemTexts, Outcome, Pipeline, RequestContext, Scope};
use schemas::{cloudevents, EventType, FieldError};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
const NDJSON: &str = "application/x-ndjson";

fn correlation(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-correlation-id").and_then(|v| v.to_str().ok()).filter(|s| schemas::EventId::new(*s).is_ok())
}

/// The event document of a `POST /events` request, in any of the three accepted forms. Plain JSON takes the
/// pipeline's text fast path, as bulk items do.
fn document<'a>(pipeline: &Pipeline, headers: &HeaderMap, bytes: &'a [u8]) -> Result<Document<'a>, ApiError> {
    if headers.contains_key("ce-specversion") {
        let mut attrs = Vec::new();
        for (name, value) in headers {
            if let Some(attr) = name.as_str().strip_prefix("ce-") {
                let v = value.to_str().map_err(|_| {
                    ApiError::bad_request("invalid_header", format!("header {name} is not visible ASCII"))
                })?;
                attrs.push((attr.to_string(), v.to_string()));
            }
        }
        let mt = body::media_type(headers);
        if mt.as_deref().is_some_and(|m| !body::is_json(m)) {
            return Err(body::unsupported_media_type("application/json (binary-mode data must be JSON)"));
        }
        let data = if bytes.iter().all(u8::is_ascii_whitespace) { None } else { Some(body::json(bytes)?) };
        return cloudevents::from_binary(attrs, mt.as_deref(), data).map(Document::Value).map_err(ApiError::invalid);
    }
    match body::media_type(headers).as_deref() {
        Some(CLOUDEVENTS_JSON) => {
            cloudevents::from_structured(&body::json(bytes)?).map(Document::Value).map_err(ApiError::invalid)
        }
        Some(mt) if body::is_json(mt) => pipeline.document(bytes).map_err(body::malformed),
        _ => Err(body::unsupported_media_type(
            "application/json, application/cloudevents+json, or binary-mode ce-* headers",
        )),
    }
}

/// `Idempotency-Key`: 1-128 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().ok().filter(|s| schemas::EventId::new(*s).is_ok()).map(Some).ok_or_else(|| {
            ApiError::bad_request("invalid_header", "Idempotency-Key must be 1-128 visible ASCII characters")
                .with_errors(vec![FieldError::new(
                    "Idempotency-Key",
                    "invalid_value",
                    "1-128 visible ASCII characters",
                )])
        }),
    }
}

/// `POST /events`: 202 with where the broker put the event, only after the broker acknowledged it.
pub async fn publish(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let received_at = OffsetDateTime::now_utc();
    let bytes = body::read(body, state.cfg.max_body_bytes, Duration::from_millis(state.cfg.body_timeout_ms)).await?;
    let doc = document(&state.pipeline, &headers, &bytes)?;
    let scope = auth.scope();
    let ctx = RequestContext {
        scope: &scope,
        started,
        received_at,
        correlation: correlation(&headers),
        idempotency_key: idempotency_key(&headers)?,
    };
    let outcome = state.pipeline.ingest(doc, &ctx).await?;
    let status = match outcome {
        Outcome::Accepted(_) => StatusCode::ACCEPTED,
        Outcome::Filtered { .. } => StatusCode::OK,
    };
    let answer = Ok(outcome);
    Ok((status, Json(ItemResult::new(None, &answer))).into_response())
}

/// `POST /events/bulk`: JSON `{"events": [...]}` or NDJSON. Per-item results in request order; 202 when all were
/// accepted (or filtered), 207 when some were, and a problem document when none were.
pub async fn bulk(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let received_at = OffsetDateTime::now_utc();
    let mt = body::media_type(&headers);
    let ndjson = match mt.as_deref() {
        Some(NDJSON) | Some("application/jsonl") => true,
        Some(m) if body::is_json(m) => false,
        _ => {
            return Err(body::unsupported_media_type("application/json ({\"events\": [...]}) or application/x-ndjson"))
        }
    };
    let bytes = body::read(body, state.cfg.max_bulk_bytes, Duration::from_millis(state.cfg.body_timeout_ms)).await?;
    // A valid event goes from its text straight to its draft (`Pipeline::bulk_documents` for a whole plain body,
    // `Pipeline::document` for one item); only the others become a `Value` tree for the field-by-field check.
    let pipeline = &state.pipeline;
    let texts = ItemTexts::new(&bytes, body::split_bulk);
    let items: Vec<Result<Document<'_>, FieldError>> = if ndjson {
        bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .map(|(n, l)| {
                pipeline.document(l).map_err(|e| {
                    FieldError::new(
                        format!("line {}", n + 1),
                        "malformed_json",
                        format!("line {} is not valid JSON (column {})", n + 1, e.column()),
                    )
                })
            })
            .collect()
    } else {
        // The plain shape, split into its items; any item that is not JSON text on its own sends the body to the
        // whole parse (see `body::split_bulk`).
        // First the whole body in one pass, which takes a body whose every event is valid; then item by item.
        let plain = pipeline.bulk_documents(&texts).or_else(|| {
            body::split_bulk(&bytes).and_then(|items| {
                items.into_iter().map(|item| pipeline.document(item).ok()).collect::<Option<Vec<_>>>()
            })
        });
        match plain {
            Some(docs) => docs.into_iter().map(Ok).collect(),
            // Not the plain shape: the full parse says what is wrong, or takes what the plain parse refused (a
            // repeated `events` key, whose last value counts).
            None => match body::json(&bytes)? {
                Value::Object(mut o) => match o.remove("events") {
                    Some(Value::Array(a)) => a.into_iter().map(|v| Ok(Document::Value(v))).collect(),
                    Some(_) => {
                        return Err(ApiError::invalid(vec![FieldError::wrong_type("events", "an array of events")]))
                    }
                    None => return Err(ApiError::invalid(vec![FieldError::missing("events")])),
                },
                _ => return Err(ApiError::invalid(vec![FieldError::wrong_type("", "an object {\"events\": [...]}")])),
            },
        }
    };
    let limit = match auth.scope() {
        Scope::Tenant(t) => state
            .pipeline
            .configs()
            .stream_config(&t)
            .map_or(state.cfg.max_bulk_items, |c| (c.config.batch_size as usize).min(state.cfg.max_bulk_items)),
        Scope::Admin => state.cfg.max_bulk_items,
    };
    if items.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_items",
            "Too many items",
            format!("a bulk request carries at most {limit} events; this one has {}", items.len()),
        )
        .with_errors(vec![FieldError::new("events", "too_many_items", format!("at most {limit} events"))]));
    }
    if items.is_empty() {
        return Err(ApiError::invalid(vec![FieldError::new("events", "empty", "send at least one event")]));
    }
    let scope = auth.scope();
    let ctx = RequestContext {
        scope: &scope,
        started,
        received_at,
        correlation: correlation(&headers),
        idempotency_key: None,
    };
    // Lines that were not JSON are rejected in place; the rest go through the pipeline together.
    let mut parsed = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(v) => {
                parsed.push(v);
                slots.push(None);
            }
            Err(fe) => slots.push(Some(fe)),
        }
    }
    let mut ingested = state.pipeline.ingest_many(parsed, &ctx).await.into_iter();
    let results: Vec<Result<Outcome, ApiError>> = slots
        .into_iter()
        .map(|slot| match slot {
            None => ingested.next().unwrap_or(Err(producer::IngestError::InFlight)).map_err(ApiError::from),
            Some(fe) => Err(ApiError::bad_request("malformed_json", fe.message.clone()).with_errors(vec![fe])),
        })
        .collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let total = results.len();
    if accepted == 0 {
        let unavailable = results.iter().any(|r| matches!(r, Err(e) if e.code == "broker_unavailable"));
        let throttled = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|e| e.status == StatusCode::TOO_MANY_REQUESTS)
            .filter_map(|e| e.retry_after_secs)
            .max();
        let mut e = if unavailable {
            ApiError::unavailable("broker_unavailable", "no event was stored; retry later", 2)
        } else if let Some(secs) = throttled {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                "Quota exceeded",
                "no event was accepted: over quota; see `results`",
            );
            e.retry_after_secs = Some(secs);
            e
        } else {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "all_rejected",
                "No event accepted",
                "every event was rejected; see `results`",
            )
        };
        e.extra.insert("accepted".into(), json!(0));
        e.extra.insert("rejected".into(), json!(total));
        let items: Vec<ItemResult<'_>> =
            results.iter().enumerate().map(|(index, r)| ItemResult::new(Some(index), r)).collect();
        e.extra.insert("results".into(), serde_json::to_value(&items).unwrap_or(Value::Null));
        return Err(e);
    }
    let status = if accepted == total { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    let body = bulk_body(if accepted == total { "all_accepted" } else { "partially_accepted" }, accepted, &results);
    Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The answer to a bulk request that accepted at least one event: `{"status", "accepted", "rejected", "results"}`,
/// the results as [`ItemResult`]s. Written by hand: an item accepted on one topic (nearly every item) is written
/// straight into the buffer, byte for byte what serde writes for it; any other item goes through serde.
fn bulk_body(status: &str, accepted: usize, results: &[Result<Outcome, ApiError>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + results.len() * 160);
    out.extend_from_slice(b"{\"status\":");
    schemas::encode::string(&mut out, status);
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b",\"accepted\":");
    out.extend_from_slice(n.format(accepted).as_bytes());
    out.extend_from_slice(b",\"rejected\":");
    out.extend_from_slice(n.format(results.len() - accepted).as_bytes());
    out.extend_from_slice(b",\"results\":[");
    for (index, r) in results.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        match r {
            Ok(Outcome::Accepted(a)) if a.also.is_empty() => {
                out.extend_from_slice(b"{\"index\":");
                out.extend_from_slice(n.format(index).as_bytes());
                out.extend_from_slice(b",\"status\":\"accepted\",\"id\":");
                schemas::encode::string(&mut out, a.id.as_str());
                out.extend_from_slice(b",\"topic\":");
                schemas::encode::string(&mut out, &a.topic);
                out.extend_from_slice(b",\"partition\":");
                out.extend_from_slice(n.format(a.partition).as_bytes());
                out.extend_from_slice(b",\"offset\":");
                out.extend_from_slice(n.format(a.offset).as_bytes());
                if a.duplicate {
                    out.extend_from_slice(b",\"duplicate\":true");
                }
                out.push(b'}');
            }
            // Writing into a `Vec` cannot fail.
            _ => {
                let _ = serde_json::to_writer(&mut out, &ItemResult::new(Some(index), r));
            }
        }
    }
    out.extend_from_slice(b"]}");
    out
}

/// The answer for one event: the body of `POST /events`, and each item of a bulk answer (with its `index`).
/// Serialised directly: a bulk answer has up to thousands of them.
#[derive(Serialize)]
struct ItemResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a schemas::EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    also: &'a [producer::pipeline::Placement],
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl<'a> ItemResult<'a> {
    fn new(index: Option<usize>, r: &'a Result<Outcome, ApiError>) -> Self {
        let mut it = ItemResult {
            index,
            status: "rejected",
            id: None,
            topic: None,
            partition: None,
            offset: None,
            duplicate: false,
            also: &[],
            reason: None,
            code: None,
            detail: None,
            errors: &[],
        };
        match r {
            Ok(Outcome::Accepted(a)) => {
                it.status = "accepted";
                it.id = Some(&a.id);
                it.topic = Some(&a.topic);
                it.partition = Some(a.partition);
                it.offset = Some(a.offset);
                it.duplicate = a.duplicate;
                it.also = &a.also;
            }
            Ok(Outcome::Filtered { id, reason }) => {
                it.status = "filtered";
                it.id = Some(id);
                it.reason = Some(reason);
            }
            Err(e) => {
                it.code = Some(e.code);
                it.detail = Some(&e.detail);
                it.errors = &e.errors;
            }
        }
        it
    }
}

fn read_filter(q: &HashMap<String, String>) -> Result<ReadFilter, ApiError> {
    let mut f = ReadFilter::default();
    if let Some(t) = q.get("eventType") {
        f.event_type = Some(EventType::parse(t).ok_or_else(|| {
            ApiError::bad_request("invalid_query", "eventType is not in the catalog")
                .with_errors(vec![FieldError::new("eventType", "unknown_event_type", "not in the catalog")])
        })?);
    }
    if let Some(s) = q.get("source") {
        schemas::SourceName::new(s.as_str()).map_err(|e| {
            ApiError::bad_request("invalid_query", e.to_string()).with_errors(vec![FieldError::new(
                "source",
                "invalid_source",
                e.to_string(),
            )])
        })?;
        f.source = Some(s.clone());
    }
    if let Some(s) = q.get("since") {
        let ms = match s.parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => {
                let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        "since must be an RFC 3339 time or milliseconds since the epoch",
                    )
                    .with_errors(vec![FieldError::new(
                        "since",
                        "invalid_timestamp",
                        "RFC 3339 or epoch milliseconds",
                    )])
                })?;
                u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
            }
        };
        f.since_ms = Some(ms);
    }
    Ok(f)
}

/// `GET /events/{tenant}?limit&eventType&source&since`: the tenant's recent events from Redis, newest first.
pub async fn recent(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant(&state, &tenant)?;
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request("invalid_query", "limit must be 1..=1000")
                    .with_errors(vec![FieldError::new("limit", "out_of_range", "1..=1000")]))
            }
        },
    };
    let filter = read_filter(&q)?;
    let events = state.pipeline.redis().read(&tenant, limit, &filter).await.map_err(|_| {
        ApiError::unavailable("redis_unavailable", "the real-time store is unavailable; retry later", 2)
    })?;
    Ok(Json(json!({"tenantId": tenant, "count": events.len(), "events": events})).into_response())
}

/// `GET /events/{tenant}/stream`: a Server-Sent Events live tail with the same filters.
pub async fn live(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant(&state, &tenant)?;
    let filter = read_filter(&q)?;
    let permit = state
        .sse_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too_many_streams", "too many live tails are open; retry later", 5))?;
    let rx = state.pipeline.redis().tail(&tenant, filter).await.map_err(|_| {
        ApiError::unavailable("redis_unavailable", "the real-time store is unavailable; retry later", 2)
    })?;
    let stream = futures::stream::unfold((rx, permit), |(mut rx, permit)| async move {
        let v = rx.recv().await?;
        let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let ev = SseEvent::default()
            .event("event")
            .id(id)
            .json_data(&v)
            .unwrap_or_else(|_| SseEvent::default().comment("unencodable"));
        Some((Ok::<_, Infallible>(ev), (rx, permit)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use producer::pipeline::{Accepted, Placement};
    use schemas::{EventId, TenantId};

    /// The shape `bulk_body` writes, serialised by serde.
    #[derive(Serialize)]
    struct BulkResponse<'a> {
        status: &'static str,
        accepted: usize,
        rejected: usize,
        results: Vec<ItemResult<'a>>,
    }

    fn accepted(topic: &str, partition: i32, offset: i64, duplicate: bool, also: Vec<Placement>) -> Accepted {
        Accepted {
            id: EventId::generate(),
            tenant: TenantId::new("t1").expect("tenant"),
            topic: topic.to_string(),
            partition,
            offset,
            also,
            duplicate,
            event_type: EventType::RISK_CREATED,
            source_label: "FRONTEND_APP",
        }
    }

    #[test]
    fn bulk_body_is_what_serde_writes() {
        let also = vec![Placement { topic: "second".into(), partition: 1, offset: 2 }];
        let results: Vec<Result<Outcome, ApiError>> = vec![
            Ok(Outcome::Accepted(accepted("evstream.events", 0, 0, false, vec![]))),
            Ok(Outcome::Accepted(accepted("a\"quote\\and\u{1}control", 11, 9_007_199_254_740_993, false, vec![]))),
            Ok(Outcome::Accepted(accepted("évènements.ünïcode", i32::MAX, i64::MAX, true, vec![]))),
            Ok(Outcome::Accepted(accepted("first", 3, 4, false, also))),
            Ok(Outcome::Filtered { id: EventId::generate(), reason: "no_filter_matched" }),
            Err(ApiError::bad_request("schema_violation", "data.riskScore: \"x\" is not a number")
                .with_errors(vec![FieldError::new("data.riskScore", "schema_violation", "not a number")])),
        ];
        for (status, accepted) in [("partially_accepted", 5), ("all_accepted", 6)] {
            let want = serde_json::to_vec(&BulkResponse {
                status,
                accepted,
                rejected: results.len() - accepted,
                results: results.iter().enumerate().map(|(i, r)| ItemResult::new(Some(i), r)).collect(),
            })
            .expect("serde");
            let got = bulk_body(status, accepted, &results);
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
        }
        assert_eq!(
            bulk_body("all_accepted", 0, &[]),
            br#"{"status":"all_accepted","accepted":0,"rejected":0,"results":[]}"#
        );
    }
}
