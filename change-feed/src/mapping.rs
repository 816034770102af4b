//! How one changed Cosmos DB document becomes one evstream event.
//!
//! A [`ContainerMapping`] names the container, the document field that holds the tenant, the `entityType` and the
//! event types for created, updated, status-changed and deleted documents. [`map_change`] is pure: the reader hands
//! it what the change feed returned (the document, the previous image and the operation when the feed runs in
//! all-versions-and-deletes mode) and gets back the envelope JSON that goes through the ingest parser, or an
//! [`Unmapped`] reason that goes to the dead-letter topic. Nothing is dropped silently.
//!
//! Created or updated, in latest-version mode where the feed carries no operation: a document whose
//! `versionField` is 1, or whose `createdAtField` (RFC 3339 or epoch seconds) falls in the same second as its `_ts`,
//! is a create; anything else is an update. A status change is detected when the previous image is known and
//! `statusField` differs, or when the document itself carries `previousStatus` different from its status.

use schemas::{EventType, TenantId};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Cosmos DB system properties: kept in `metadata`, never copied into `data`.
const SYSTEM_FIELDS: &[&str] = &["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"];

/// The mapping of one container, from the `changeFeed.containers` list of evstream's change-feed config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerMapping {
    pub database: String,
    pub container: String,
    /// Dot path of the field that holds the tenant id.
    #[serde(default = "default_tenant_field")]
    pub tenant_field: String,
    /// The event's `entityType` (`risk`, `control`, ...).
    pub entity_type: String,
    /// Event type of a created document; `DATA_CHANGE` when unset (and so for the three below).
    #[serde(default)]
    pub created: Option<EventType>,
    #[serde(default)]
    pub updated: Option<EventType>,
    #[serde(default)]
    pub deleted: Option<EventType>,
    /// Event type when `statusField` changed; an update when unset.
    #[serde(default)]
    pub status_changed: Option<EventType>,
    #[serde(default)]
    pub status_field: Option<String>,
    /// A field that is 1 on a document's first version.
    #[serde(default)]
    pub version_field: Option<String>,
    /// A field that holds the document's creation time.
    #[serde(default)]
    pub created_at_field: Option<String>,
}

fn default_tenant_field() -> String {
    "tenantId".to_owned()
}

/// What the change feed said about the change, when it says anything (all-versions-and-deletes mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Replace,
    Delete,
}

/// One change as read from the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The document after the change; for a delete, what the feed kept of it (at least `id` and the key).
    pub current: Value,
    pub previous: Option<Value>,
    pub operation: Option<Operation>,
    pub lsn: Option<i64>,
}

/// Why a change could not become an event; each carries a stable reason code for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmapped {
    #[error("the changed document is not a JSON object")]
    NotAnObject,
    #[error("the changed document has no string `id`")]
    MissingId,
    #[error("the changed document has no tenant at `{field}`")]
    MissingTenant { field: String },
    #[error("the tenant at `{field}` is not a valid tenant id")]
    InvalidTenant { field: String },
}

impl Unmapped {
    /// Stable reason code (a bounded set, usable as a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Unmapped::NotAnObject => "not_an_object",
            Unmapped::MissingId => "missing_id",
            Unmapped::MissingTenant { .. } => "missing_tenant",
            Unmapped::InvalidTenant { .. } => "invalid_tenant",
        }
    }
}

/// The kind of change after the mapping rules ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Created,
    Updated,
    StatusChanged,
    Deleted,
}

impl Kind {
    fn action(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Updated => "updated",
            Kind::StatusChanged => "status_changed",
            Kind::Deleted => "deleted",
        }
    }
}

/// The deterministic event id of a change: the same change read twice (a replay after a restart) gets the same id.
/// `_etag` changes with every write of a document; `_ts` stands in where a feed omits it, and the operation tells a
/// delete apart from the last write it follows.
pub fn event_id(container: &str, doc: &Map<String, Value>, operation: Option<Operation>) -> Option<String> {
    let id = doc.get("id")?.as_str()?;
    let version = match (doc.get("_etag").and_then(Value::as_str), doc.get("_ts").and_then(Value::as_i64)) {
        (Some(etag), _) => format!("etag:{etag}"),
        (None, Some(ts)) => format!("ts:{ts}"),
        (None, None) => "none".to_owned(),
    };
    let mut h = Sha256::new();
    for part in [container, id, &version, if operation == Some(Operation::Delete) { "delete" } else { "" }] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Some(format!("cosmos-{}", hex::encode(&h.finalize()[..16])))
}

/// Turns one change into the envelope JSON of its event (for the ingest parser), or says why it cannot.
pub fn map_change(mapping: &ContainerMapping, change: &Change) -> Result<Value, Unmapped> {
    let doc = change.current.as_object().ok_or(Unmapped::NotAnObject)?;
    let doc_id = doc.get("id").and_then(Value::as_str).ok_or(Unmapped::MissingId)?;
    let tenant_raw = lookup(doc, &mapping.tenant_field)
        .or_else(|| change.previous.as_ref().and_then(Value::as_object).and_then(|p| lookup(p, &mapping.tenant_field)))
        .ok_or_else(|| Unmapped::MissingTenant { field: mapping.tenant_field.clone() })?;
    let tenant = tenant_raw
        .as_str()
        .and_then(|s| TenantId::new(s).ok())
        .ok_or_else(|| Unmapped::InvalidTenant { field: mapping.tenant_field.clone() })?;
    let id = event_id(&mapping.container, doc, change.operation).ok_or(Unmapped::MissingId)?;

    let previous = change.previous.as_ref().and_then(Value::as_object);
    let kind = classify(mapping, doc, previous, change.operation);
    let event_type = match kind {
        Kind::Created => mapping.created,
        Kind::Updated => mapping.updated,
        Kind::StatusChanged => mapping.status_changed.or(mapping.updated),
        Kind::Deleted => mapping.deleted,
    }
    .unwrap_or(EventType::DATA_CHANGE);

    let ts = doc.get("_ts").and_then(Value::as_i64);
    let mut metadata = Map::new();
    metadata.insert("database".into(), json!(mapping.database));
    metadata.insert("container".into(), json!(mapping.container));
    metadata.insert("documentId".into(), json!(doc_id));
    if let Some(etag) = doc.get("_etag") {
        metadata.insert("etag".into(), etag.clone());
    }
    if let Some(ts) = ts {
        metadata.insert("ts".into(), json!(ts));
    }
    if let Some(lsn) = change.lsn {
        metadata.insert("lsn".into(), json!(lsn));
    }

    let data = if event_type == EventType::DATA_CHANGE {
        data_change(mapping, doc, previous, kind, change.lsn)
    } else {
        let mut data = user_fields(doc);
        if kind == Kind::StatusChanged {
            if let Some(field) = &mapping.status_field {
                let old = previous.and_then(|p| lookup(p, field)).or_else(|| doc.get("previousStatus"));
                data.insert("previousStatus".into(), old.cloned().unwrap_or(Value::Null));
                data.insert("newStatus".into(), lookup(doc, field).cloned().unwrap_or(Value::Null));
            }
        }
        data
    };

    let mut event = json!({
        "id": id,
        "tenantId": tenant.as_str(),
        "eventType": event_type.as_str(),
        "source": "COSMOS_DB",
        "action": kind.action(),
        "entityId": doc_id,
        "entityType": mapping.entity_type,
        "data": data,
        "metadata": metadata,
    });
    if let Some(at) = ts.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()).and_then(|t| t.format(&Rfc3339).ok())
    {
        event["occurredAt"] = Value::String(at);
    }
    Ok(event)
}

fn classify(
    mapping: &ContainerMapping,
    doc: &Map<String, Value>,
    previous: Option<&Map<String, Value>>,
    operation: Option<Operation>,
) -> Kind {
    match operation {
        Some(Operation::Delete) => return Kind::Deleted,
        Some(Operation::Create) => return Kind::Created,
        Some(Operation::Replace) | None => {}
    }
    if operation.is_none() && is_first_version(mapping, doc) {
        return Kind::Created;
    }
    if let Some(field) = &mapping.status_field {
        let now = lookup(doc, field);
        let before = match previous {
            Some(p) => lookup(p, field),
            None => doc.get("previousStatus"),
        };
        if now.is_some() && before.is_some() && now != before {
            return Kind::StatusChanged;
        }
    }
    Kind::Updated
}

fn is_first_version(mapping: &ContainerMapping, doc: &Map<String, Value>) -> bool {
    if let Some(field) = &mapping.version_field {
        if let Some(v) = lookup(doc, field).and_then(Value::as_i64) {
            return v == 1;
        }
    }
    if let (Some(field), Some(ts)) = (&mapping.created_at_field, doc.get("_ts").and_then(Value::as_i64)) {
        let created = match lookup(doc, field) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => OffsetDateTime::parse(s, &Rfc3339).ok().map(OffsetDateTime::unix_timestamp),
            _ => None,
        };
        if let Some(created) = created {
            return created == ts;
        }
    }
    false
}

fn data_change(
    mapping: &ContainerMapping,
    doc: &Map<String, Value>,
    previous: Option<&Map<String, Value>>,
    kind: Kind,
    lsn: Option<i64>,
) -> Map<String, Value> {
    let operation = match kind {
        Kind::Created => "create",
        Kind::Updated | Kind::StatusChanged => "update",
        Kind::Deleted => "delete",
    };
    let after = user_fields(doc);
    let mut data = Map::new();
    data.insert("operation".into(), json!(operation));
    data.insert("database".into(), json!(mapping.database));
    data.insert("container".into(), json!(mapping.container));
    if let Some(id) = doc.get("id") {
        data.insert("documentId".into(), id.clone());
    }
    if let Some(etag) = doc.get("_etag").filter(|e| e.is_string()) {
        data.insert("etag".into(), etag.clone());
    }
    if let Some(lsn) = lsn.filter(|l| *l >= 0) {
        data.insert("lsn".into(), json!(lsn));
    }
    if let Some(before) = previous {
        let before = user_fields(before);
        let mut changed: Vec<&String> =
            after.keys().chain(before.keys()).filter(|k| after.get(*k) != before.get(*k)).collect();
        changed.sort();
        changed.dedup();
        data.insert("changedFields".into(), json!(changed));
        data.insert("before".into(), Value::Object(before));
    }
    data.insert("after".into(), if kind == Kind::Deleted { Value::Null } else { Value::Object(after) });
    data
}

/// The document without Cosmos DB's system properties.
fn user_fields(doc: &Map<String, Value>) -> Map<String, Value> {
    doc.iter().filter(|(k, _)| !SYSTEM_FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn lookup<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur).filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::event::parse_owned;
    use schemas::Catalog;

    fn risks() -> ContainerMapping {
        serde_json::from_value(json!({
            "database": "grc", "container": "risks", "entityType": "risk",
            "created": "RISK_CREATED", "updated": "RISK_UPDATED", "deleted": "RISK_DELETED",
            "statusChanged": "RISK_STATUS_CHANGED", "statusField": "status", "versionField": "version"
        }))
        .unwrap()
    }

    fn change(current: Value) -> Change {
        Change { current, previous: None, operation: None, lsn: Some(7) }
    }

    fn doc(version: i64, status: &str, etag: &str) -> Value {
        json!({"id": "risk-1", "tenantId": "acme", "title": "Vendor lock-in", "riskScore": 64, "status": status,
               "version": version, "_etag": etag, "_ts": 1_764_700_000, "_rid": "abc", "_self": "dbs/x"})
    }

    /// Every mapped change is accepted by the same parser as `POST /events`, with the fields the mapping names.
    #[test]
    fn mapped_events_pass_the_ingest_parser() {
        let catalog = Catalog::new();
        let m = risks();
        let mut prev = change(doc(2, "open", "\"e2\""));
        prev.previous = Some(doc(1, "draft", "\"e1\""));
        for c in [change(doc(1, "open", "\"e1\"")), change(doc(2, "open", "\"e2\"")), prev] {
            let v = map_change(&m, &c).unwrap();
            let draft = parse_owned(v.clone(), &catalog).map_err(|(e, _)| e).unwrap();
            assert_eq!(draft.tenant_id.as_str(), "acme");
            assert_eq!(draft.source.as_str(), "COSMOS_DB");
            assert_eq!(draft.entity_id.as_deref(), Some("risk-1"));
            assert_eq!(draft.entity_type.as_deref(), Some("risk"));
            assert!(draft.occurred_at.is_some());
            assert!(!draft.data.contains_key("_rid") && !draft.data.contains_key("_etag"), "{:?}", draft.data);
            assert_eq!(draft.metadata["container"], "risks");
        }
    }

    /// Version 1 is a create, a later version an update, a changed status a status change, a delete a delete.
    #[test]
    fn event_type_follows_the_mapping_rules() {
        let m = risks();
        let ty = |c: &Change| map_change(&m, c).unwrap()["eventType"].as_str().unwrap().to_owned();
        assert_eq!(ty(&change(doc(1, "open", "\"e1\""))), "RISK_CREATED");
        assert_eq!(ty(&change(doc(3, "open", "\"e3\""))), "RISK_UPDATED");

        let mut sc = change(doc(3, "closed", "\"e3\""));
        sc.previous = Some(doc(2, "open", "\"e2\""));
        let v = map_change(&m, &sc).unwrap();
        assert_eq!(v["eventType"], "RISK_STATUS_CHANGED");
        assert_eq!(v["data"]["previousStatus"], "open");
        assert_eq!(v["data"]["newStatus"], "closed");

        let mut same = change(doc(3, "open", "\"e3\""));
        same.previous = Some(doc(2, "open", "\"e2\""));
        assert_eq!(ty(&same), "RISK_UPDATED");

        let mut del = change(json!({"id": "risk-1", "tenantId": "acme", "_ts": 1_764_700_100}));
        del.operation = Some(Operation::Delete);
        assert_eq!(ty(&del), "RISK_DELETED");
        assert_eq!(map_change(&m, &del).unwrap()["action"], "deleted");
    }

    /// `createdAtField` in the same second as `_ts` marks a create, in RFC 3339 or epoch seconds.
    #[test]
    fn created_at_field_marks_a_create() {
        let mut m = risks();
        m.version_field = None;
        m.created_at_field = Some("createdAt".into());
        let at = |created: Value| {
            let c = change(json!({"id": "r", "tenantId": "acme", "createdAt": created, "_ts": 1_764_700_000}));
            map_change(&m, &c).unwrap()["eventType"].as_str().unwrap().to_owned()
        };
        assert_eq!(at(json!("2025-12-02T18:26:40Z")), "RISK_CREATED");
        assert_eq!(at(json!(1_764_700_000)), "RISK_CREATED");
        assert_eq!(at(json!("2025-12-01T00:00:00Z")), "RISK_UPDATED");
    }

    /// The same change read twice has the same id; another write of the document (new `_etag`) or its delete does
    /// not.
    #[test]
    fn ids_are_stable_across_replays() {
        let m = risks();
        let a = map_change(&m, &change(doc(2, "open", "\"e2\""))).unwrap()["id"].clone();
        let b = map_change(&m, &change(doc(2, "open", "\"e2\""))).unwrap()["id"].clone();
        let c = map_change(&m, &change(doc(3, "open", "\"e3\""))).unwrap()["id"].clone();
        let mut del = change(doc(2, "open", "\"e2\""));
        del.operation = Some(Operation::Delete);
        let d = map_change(&m, &del).unwrap()["id"].clone();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        let mut other = m.clone();
        other.container = "controls".into();
        assert_ne!(a, map_change(&other, &change(doc(2, "open", "\"e2\""))).unwrap()["id"]);
    }

    /// Without event types in the mapping a change is a DATA_CHANGE with before/after and the changed fields, valid
    /// against its schema.
    #[test]
    fn unmapped_types_become_data_change() {
        let m: ContainerMapping = serde_json::from_value(json!({
            "database": "grc", "container": "notes", "entityType": "note", "tenantField": "owner.tenant"
        }))
        .unwrap();
        let mut c = change(json!({"id": "n1", "owner": {"tenant": "acme"}, "text": "b", "_etag": "\"2\"", "_ts": 5}));
        c.previous = Some(json!({"id": "n1", "owner": {"tenant": "acme"}, "text": "a", "_etag": "\"1\"", "_ts": 4}));
        let v = map_change(&m, &c).unwrap();
        assert_eq!(v["eventType"], "DATA_CHANGE");
        assert_eq!(v["data"]["operation"], "update");
        assert_eq!(v["data"]["changedFields"], json!(["text"]));
        assert_eq!(v["data"]["before"]["text"], "a");
        assert_eq!(v["data"]["after"]["text"], "b");
        assert_eq!(v["data"]["lsn"], 7);
        parse_owned(v, &Catalog::new()).map_err(|(e, _)| e).unwrap();
    }

    /// Documents that cannot become events say why, with a stable code.
    #[test]
    fn unmappable_documents_name_the_reason() {
        let m = risks();
        let code = |v: Value| map_change(&m, &change(v)).unwrap_err().code();
        assert_eq!(code(json!([1])), "not_an_object");
        assert_eq!(code(json!({"tenantId": "acme"})), "missing_id");
        assert_eq!(code(json!({"id": "r"})), "missing_tenant");
        assert_eq!(code(json!({"id": "r", "tenantId": null})), "missing_tenant");
        assert_eq!(code(json!({"id": "r", "tenantId": "no spaces allowed"})), "invalid_tenant");
        assert_eq!(code(json!({"id": "r", "tenantId": 42})), "invalid_tenant");
    }

    /// A mapping with an unknown field or event type is refused, not half-applied.
    #[test]
    fn bad_mappings_are_refused() {
        let base = json!({"database": "d", "container": "c", "entityType": "e"});
        let mut extra = base.clone();
        extra["tenantFeild"] = json!("x");
        assert!(serde_json::from_value::<ContainerMapping>(extra).is_err());
        let mut bad_type = base.clone();
        bad_type["created"] = json!("RISK_BORN");
        assert!(serde_json::from_value::<ContainerMapping>(bad_type).is_err());
        assert_eq!(serde_json::from_value::<ContainerMapping>(base).unwrap().tenant_field, "tenantId");
    }
}
