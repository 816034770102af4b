//! Fuzzes everything that reads untrusted event input: JSON -> envelope parser and JSON Schema validation,
//! CloudEvents structured mode, and stream-config documents. None may panic; anything the parser accepts must
//! have a valid tenant, type and source, and survive a JSON round trip of its data unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::{Catalog, StreamConfig, TenantId};
use std::sync::LazyLock;

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::new);

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(d) = schemas::event::parse_event(&v, &CATALOG) {
        assert!(TenantId::new(d.tenant_id.as_str()).is_ok());
        assert!(schemas::EventType::parse(d.event_type.as_str()).is_some());
        let text = serde_json::to_string(&d.data).expect("data serialises");
        let back: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("data parses back");
        assert_eq!(back, d.data);
    }
    if let Ok(envelope) = schemas::cloudevents::from_structured(&v) {
        let _ = schemas::event::parse_event(&envelope, &CATALOG);
    }
    if let Ok(t) = TenantId::new("fuzz") {
        let _ = StreamConfig::from_json(v, &t);
    }
});
