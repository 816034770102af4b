//! Enrichment: the fields evstream adds on ingest.

use schemas::event::EventDraft;
use schemas::Event;
use time::OffsetDateTime;

/// Fills `id` (UUIDv7) when absent, `receivedAt`, `schemaVersion`, `occurredAt` (defaults to receipt time) and
/// `correlationId` (the client's, else the request's `X-Correlation-Id`, else the event id).
pub fn enrich(d: EventDraft, received_at: OffsetDateTime, request_correlation: Option<&str>) -> Event {
    d.into_event(received_at, |id| request_correlation.map_or_else(|| id.as_str().to_string(), str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::SCHEMA_VERSION;
    use schemas::Catalog;
    use serde_json::json;

    #[test]
    fn fills_server_fields() {
        let d = schemas::event::parse_event(
            &json!({"tenantId":"t","eventType":"USER_ACTION","source":"FRONTEND_APP"}),
            &Catalog::new(),
        )
        .unwrap();
        let now = OffsetDateTime::now_utc();
        let e = enrich(d, now, Some("req-1"));
        assert_eq!(uuid::Uuid::parse_str(e.id.as_str()).unwrap().get_version_num(), 7);
        assert_eq!(e.correlation_id, "req-1");
        assert_eq!(e.occurred_at, now);
        assert_eq!(e.schema_version, SCHEMA_VERSION);
    }

    #[test]
    fn keeps_client_fields() {
        let d = schemas::event::parse_event(
            &json!({"id":"abc","tenantId":"t","eventType":"USER_ACTION","source":"FRONTEND_APP","correlationId":"c1","occurredAt":"2026-01-01T00:00:00Z"}),
            &Catalog::new(),
        )
        .unwrap();
        let e = enrich(d, OffsetDateTime::now_utc(), Some("req-1"));
        assert_eq!((e.id.as_str(), e.correlation_id.as_str()), ("abc", "c1"));
        assert_eq!(e.occurred_at.year(), 2026);
    }
}
