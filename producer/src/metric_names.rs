//! Every metric evstream exports. Labels come from bounded sets only (see each constant).

/// counter {route, method, status}
pub const HTTP_REQUESTS_TOTAL: &str = "evstream_http_requests_total";
/// histogram {route}
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "evstream_http_request_duration_seconds";
/// gauge
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "evstream_http_requests_in_flight";
/// counter {tenant, event_type, source}; tenant is a registered tenant, source a catalog source or `custom`
pub const EVENTS_ACCEPTED_TOTAL: &str = "evstream_events_accepted_total";
/// counter {tenant, reason}; tenant is `unknown` when not registered
pub const EVENTS_REJECTED_TOTAL: &str = "evstream_events_rejected_total";
/// counter {tenant, reason}
pub const EVENTS_FILTERED_TOTAL: &str = "evstream_events_filtered_total";
/// histogram: request received -> broker acknowledged
pub const INGEST_DURATION_SECONDS: &str = "evstream_ingest_duration_seconds";
/// histogram: a batch's records queued -> the last of them acknowledged, one sample per record
pub const KAFKA_PRODUCE_DURATION_SECONDS: &str = "evstream_kafka_produce_duration_seconds";
/// counter {reason}
pub const KAFKA_PRODUCE_ERRORS_TOTAL: &str = "evstream_kafka_produce_errors_total";
/// counter {result = ok|error|dropped}
pub const REDIS_STREAM_WRITES_TOTAL: &str = "evstream_redis_stream_writes_total";
/// counter {reason}
pub const DEADLETTER_TOTAL: &str = "evstream_deadletter_total";
/// counter {kind}
pub const CONFIG_RECORDS_APPLIED_TOTAL: &str = "evstream_config_records_applied_total";
/// counter: retries answered from the idempotency store
pub const EVENTS_DEDUPLICATED_TOTAL: &str = "evstream_events_deduplicated_total";
/// counter: requests ingested without de-duplication because Redis was unreachable
pub const IDEMPOTENCY_UNAVAILABLE_TOTAL: &str = "evstream_idempotency_unavailable_total";
/// counter: requests ingested without quota enforcement because Redis was unreachable
pub const QUOTA_UNAVAILABLE_TOTAL: &str = "evstream_quota_unavailable_total";
/// counter {container}: change-feed pages read; container is a configured container name
pub const CHANGEFEED_PAGES_TOTAL: &str = "evstream_changefeed_pages_total";
/// counter {container, result = published|duplicate|filtered|deadlettered}
pub const CHANGEFEED_DOCUMENTS_TOTAL: &str = "evstream_changefeed_documents_total";
/// counter {container, kind = client|container|feed_ranges|query|page|throttled|broker|quota|in_flight|deadletter|redis};
/// container is `*` for `client` (the account itself)
pub const CHANGEFEED_ERRORS_TOTAL: &str = "evstream_changefeed_errors_total";
/// gauge {container, range}: seconds since the last change seen on the range (its `_ts`); range is the range's
/// index in the container's lease list
pub const CHANGEFEED_LAG_SECONDS: &str = "evstream_changefeed_lag_seconds";
/// gauge {container}: feed ranges this process holds the lease of
pub const CHANGEFEED_RANGES_OWNED: &str = "evstream_changefeed_ranges_owned";
