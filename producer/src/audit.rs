//! The audit trail: every configuration and alert action is appended to the audit topic, and each record carries
//! the hash of the one before it, so that removing, reordering or altering a record breaks the chain.
//!
//! Every instance writes its own chain (`chainId`, `seq` from 1, `prevHash`, `hash` = SHA-256 of the previous hash
//! and the record's canonical JSON without `hash`). Records are keyed by chain, so a chain stays on one partition.
//! [`verify`] checks every chain and reports the first break. Records never carry secrets or payloads: who, what,
//! which tenant and object, and the outcome.

use crate::sinks::kafka::KafkaSink;
use rdkafka::message::OwnedHeaders;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const AUDIT_TOPIC: &str = "evstream.audit";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the caller describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// `admin`, `key:<key id>` or `policy` (the alert stream).
    pub actor: String,
    /// e.g. `PUT /tenants/{tenant}/policies/{id}` or `alert.resolved`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The object acted on (path or alert id).
    pub subject: String,
    /// HTTP status or transition outcome.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub chain_id: String,
    pub seq: u64,
    pub at: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    /// SHA-256 over the previous hash and the record's JSON with an empty `hash` field.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let body = serde_json::to_vec(&unhashed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(&body);
        hex::encode(h.finalize())
    }
}

struct Chain {
    id: String,
    seq: u64,
    last: String,
}

#[derive(Clone)]
pub struct AuditLog {
    kafka: KafkaSink,
    topic: String,
    chain: Arc<Mutex<Chain>>,
}

impl AuditLog {
    pub fn new(kafka: KafkaSink, topic: String) -> Self {
        let chain = Chain { id: uuid::Uuid::now_v7().to_string(), seq: 0, last: GENESIS.to_string() };
        Self { kafka, topic, chain: Arc::new(Mutex::new(chain)) }
    }

    /// Appends an entry to this instance's chain (written in the background).
    pub fn append(&self, entry: AuditEntry) {
        let record = {
            let Ok(mut c) = self.chain.lock() else { return };
            c.seq += 1;
            let mut r = AuditRecord {
                chain_id: c.id.clone(),
                seq: c.seq,
                at: crate::now_rfc3339(),
                entry,
                prev_hash: c.last.clone(),
                hash: String::new(),
            };
            r.hash = r.compute_hash();
            c.last.clone_from(&r.hash);
            r
        };
        let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
        tokio::spawn(async move {
            let payload = serde_json::to_vec(&record).unwrap_or_default();
            if let Err(e) = kafka.send(&topic, &record.chain_id, &payload, OwnedHeaders::new(), false).await {
                tracing::error!(error = %e, seq = record.seq, "audit record not written");
            }
        });
    }
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Break {
    pub chain_id: String,
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verified {
    pub records: usize,
    pub chains: usize,
}

/// Checks every chain: sequence numbers 1, 2, 3... without gaps or repeats, each `prevHash` equal to the previous
/// record's `hash`, each `hash` correct. Returns the first break (by chain, then sequence).
pub fn verify(records: &[AuditRecord]) -> Result<Verified, Break> {
    let mut chains: BTreeMap<&str, Vec<&AuditRecord>> = BTreeMap::new();
    for r in records {
        chains.entry(r.chain_id.as_str()).or_default().push(r);
    }
    for (id, rs) in &mut chains {
        rs.sort_by_key(|r| r.seq);
        let mut prev = GENESIS.to_string();
        for (i, r) in rs.iter().enumerate() {
            let expected = i as u64 + 1;
            let fail = |reason: String| Break { chain_id: (*id).to_string(), seq: r.seq, reason };
            if r.seq != expected {
                return Err(fail(format!(
                    "expected record {expected}, found {} (a record is missing or repeated)",
                    r.seq
                )));
            }
            if r.prev_hash != prev {
                return Err(fail("prevHash does not match the previous record's hash".into()));
            }
            if r.compute_hash() != r.hash {
                return Err(fail("hash does not match the record's content".into()));
            }
            prev.clone_from(&r.hash);
        }
    }
    Ok(Verified { records: records.len(), chains: chains.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry {
                    actor: "admin".into(),
                    action: "PUT x".into(),
                    tenant: Some("t".into()),
                    subject: format!("s{seq}"),
                    outcome: "200".into(),
                };
                let mut r = AuditRecord {
                    chain_id: "c".into(),
                    seq,
                    at: "2026-01-01T00:00:00Z".into(),
                    entry,
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = r.compute_hash();
                prev.clone_from(&r.hash);
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(Verified { records: 5, chains: 1 }));
    }

    #[test]
    fn tampering_is_found_where_it_happened() {
        let mut c = chain(5);
        c[2].entry.outcome = "403".into();
        assert_eq!(verify(&c).unwrap_err().seq, 3);
        let mut c = chain(5);
        c.remove(3);
        assert_eq!(verify(&c).unwrap_err().seq, 5);
        let mut c = chain(5);
        let forged = c[1].clone();
        c[1] = AuditRecord { hash: String::new(), ..forged };
        c[1].hash = c[1].compute_hash();
        assert!(verify(&c).is_ok(), "recomputing a hash in place keeps the chain only if nothing changed");
        c[1].entry.actor = "mallory".into();
        c[1].hash = c[1].compute_hash();
        assert_eq!(verify(&c).unwrap_err().seq, 3, "a forged record with a fresh hash breaks the next link");
    }
}
