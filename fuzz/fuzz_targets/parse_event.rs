//! Fuzzes everything that reads untrusted event input: JSON -> envelope parser and JSON Schema validation,
//! CloudEvents structured mode, stream-config documents, and the one-pass reader of bulk bodies. None may panic;
//! anything the parser accepts must have a valid tenant, type and source, and survive a JSON round trip of its data
//! unchanged; a bulk body the one-pass reader takes must be one serde_json reads, each of whose events the
//! single-event fast path takes with the same draft.

#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::{Catalog, StreamConfig, TenantId};
use std::sync::LazyLock;

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::new);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<'a> {
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(drafts) = schemas::event::parse_bulk_text(text, &CATALOG, |d| d) {
            let plain: Plain<'_> = serde_json::from_str(text).expect("a body the bulk reader takes is JSON");
            let each: Vec<_> = plain
                .events
                .iter()
                .map(|e| schemas::event::parse_text(e.get(), &CATALOG).expect("each event takes the fast path"))
                .collect();
            assert_eq!(drafts, each);
            // The texts stored as sent too (drafts compare their parts' values only).
            let texts = |d: &schemas::event::EventDraft| {
                (d.data.text().map(str::to_string), d.metadata.text().map(str::to_string))
            };
            assert_eq!(drafts.iter().map(texts).collect::<Vec<_>>(), each.iter().map(texts).collect::<Vec<_>>());
        }
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(d) = schemas::event::parse_event(&v, &CATALOG) {
        assert!(TenantId::new(d.tenant_id.as_str()).is_ok());
        assert!(schemas::EventType::parse(d.event_type.as_str()).is_some());
        let text = serde_json::to_string(&d.data).expect("data serialises");
        let back: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("data parses back");
        assert_eq!(back, *d.data);
    }
    if let Ok(envelope) = schemas::cloudevents::from_structured(&v) {
        let _ = schemas::event::parse_event(&envelope, &CATALOG);
    }
    if let Ok(t) = TenantId::new("fuzz") {
        let _ = StreamConfig::from_json(v, &t);
    }
});
