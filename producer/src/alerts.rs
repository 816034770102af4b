//! Alert state, shared by the alert stream (which opens and updates alerts) and the HTTP API (which lists,
//! acknowledges and resolves them). Alerts live in Redis: one hash per alert, a per-tenant index by last activity,
//! and a capped history list of transitions and delivery attempts. Every transition is also published to the
//! alerts topic (keyed by alert id) so that other systems, and the alert stream's receivers, follow them.

use crate::redis_conn::RedisConn;
use crate::sinks::kafka::KafkaSink;
use rdkafka::message::{Header, OwnedHeaders};
use schemas::policy::Severity;
use schemas::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const ALERTS_TOPIC: &str = "evstream.alerts";
/// History entries kept per alert.
const HISTORY_MAX: isize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Active,
    Acknowledged,
    Resolved,
    /// Raised but not notified: throttled, or over the policy's hourly limit.
    Suppressed,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
            Self::Suppressed => "suppressed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "acknowledged" => Self::Acknowledged,
            "resolved" => Self::Resolved,
            "suppressed" => Self::Suppressed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: String,
    pub tenant_id: String,
    pub policy_id: String,
    pub group_key: String,
    pub status: AlertStatus,
    pub severity: Severity,
    pub summary: String,
    pub message: Option<String>,
    /// Events that matched while the alert was open.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Why it is suppressed, when it is.
    pub reason: Option<String>,
    /// The last event that matched.
    pub last_event_id: String,
}

/// One transition or delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: String,
    /// `opened`, `updated`, `suppressed`, `acknowledged`, `resolved`, `reopened`, `delivery`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A transition as published on the alerts topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub kind: String,
    pub alert: Alert,
    /// Who caused it: `policy` (the alert stream) or `api`.
    pub by: String,
}

/// The stable id of the alert of (tenant, policy, group key): also PagerDuty's `dedup_key`.
pub fn alert_id(tenant: &TenantId, policy: &str, group_key: &str) -> String {
    let h = Sha256::digest(format!("{tenant}\u{1f}{policy}\u{1f}{group_key}").as_bytes());
    hex::encode(&h[..12])
}

pub use crate::now_rfc3339;

/// Milliseconds since the epoch: the time of the alert stream's decisions (throttle, hourly limits).
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    #[error("alert store unavailable")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct AlertStore {
    redis: RedisConn,
    kafka: KafkaSink,
    topic: String,
    audit: crate::audit::AuditLog,
}

fn key(t: &str, id: &str) -> String {
    format!("evstream:{t}:alert:{id}")
}
fn history_key(t: &str, id: &str) -> String {
    format!("evstream:{t}:alert:{id}:history")
}
fn index_key(t: &str) -> String {
    format!("evstream:{t}:alerts")
}

/// What the alert stream asks for when a policy matched an event.
pub struct Firing<'a> {
    pub tenant: &'a TenantId,
    pub policy_id: &'a str,
    pub group_key: &'a str,
    pub severity: Severity,
    pub summary: String,
    pub message: Option<String>,
    pub event_id: &'a str,
    pub throttle_minutes: u32,
    pub max_alerts_per_hour: Option<u32>,
    /// Raise silently for this reason (`silenced`, `inhibited`), decided by the caller.
    pub mute: Option<&'static str>,
    /// When the decision is made (ms since the epoch, [`now_ms`] in the alert stream): the throttle window and the
    /// hour of `max_alerts_per_hour` are measured on it, so a caller (a test) can move time without waiting.
    pub at_ms: i64,
}

/// Throttle: notified at ARGV[1] unless the last notification (KEYS[1]) is less than ARGV[2] ms before it.
static THROTTLE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local last = redis.call('GET', KEYS[1])
if last and tonumber(ARGV[1]) - tonumber(last) < tonumber(ARGV[2]) and tonumber(ARGV[1]) >= tonumber(last) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1",
    )
});

/// What happened to an alert when an event matched.
#[derive(Debug, Clone, PartialEq)]
pub enum Raised {
    /// A new (or re-opened) alert: notify its receivers.
    Opened { alert: Alert, reopened: bool },
    /// The open alert was updated (grouping): no new notification.
    Updated(Alert),
    /// Raised but not notified (throttled or over the hourly limit).
    Suppressed(Alert),
    /// This event was already applied (a redelivery): nothing changed.
    Seen,
}

impl AlertStore {
    /// The Redis connection (the alert stream keeps its notification outbox there too).
    pub fn redis(&self) -> &RedisConn {
        &self.redis
    }

    pub fn new(redis: RedisConn, kafka: KafkaSink, topic: String, audit: crate::audit::AuditLog) -> Self {
        Self { redis, kafka, topic, audit }
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<Alert>, AlertStoreError> {
        let mut c = redis::cmd("HGET");
        c.arg(key(tenant, id)).arg("doc");
        let doc: Option<String> = self.redis.query(&c).await?;
        Ok(doc.and_then(|d| serde_json::from_str(&d).ok()))
    }

    async fn put(&self, a: &Alert, history: &HistoryEntry) -> Result<(), AlertStoreError> {
        let mut pipe = redis::pipe();
        let doc = serde_json::to_string(a).unwrap_or_default();
        pipe.cmd("HSET").arg(key(&a.tenant_id, &a.id)).arg("doc").arg(doc).ignore();
        pipe.cmd("ZADD").arg(index_key(&a.tenant_id)).arg(now_ms()).arg(&a.id).ignore();
        pipe.cmd("LPUSH")
            .arg(history_key(&a.tenant_id, &a.id))
            .arg(serde_json::to_string(history).unwrap_or_default())
            .ignore();
        pipe.cmd("LTRIM").arg(history_key(&a.tenant_id, &a.id)).arg(0).arg(HISTORY_MAX - 1).ignore();
        self.redis.query::<()>(&pipe).await?;
        Ok(())
    }

    pub async fn record(&self, tenant: &str, id: &str, entry: &HistoryEntry) {
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH").arg(history_key(tenant, id)).arg(serde_json::to_string(entry).unwrap_or_default()).ignore();
        pipe.cmd("LTRIM").arg(history_key(tenant, id)).arg(0).arg(HISTORY_MAX - 1).ignore();
        if let Err(e) = self.redis.query::<()>(&pipe).await {
            tracing::warn!(error = %e, "alert history not written");
        }
    }

    pub async fn history(&self, tenant: &str, id: &str) -> Result<Vec<HistoryEntry>, AlertStoreError> {
        let mut c = redis::cmd("LRANGE");
        c.arg(history_key(tenant, id)).arg(0).arg(HISTORY_MAX - 1);
        let items: Vec<String> = self.redis.query(&c).await?;
        // Stored newest first; answer oldest first.
        Ok(items.iter().rev().filter_map(|s| serde_json::from_str(s).ok()).collect())
    }

    /// The tenant's alerts, most recently active first.
    pub async fn list(&self, tenant: &str, limit: usize) -> Result<Vec<Alert>, AlertStoreError> {
        let mut c = redis::cmd("ZREVRANGE");
        c.arg(index_key(tenant)).arg(0).arg(limit.saturating_sub(1));
        let ids: Vec<String> = self.redis.query(&c).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET").arg(key(tenant, id)).arg("doc");
        }
        let docs: Vec<Option<String>> = self.redis.query(&pipe).await?;
        Ok(docs.into_iter().flatten().filter_map(|d| serde_json::from_str(&d).ok()).collect())
    }

    async fn publish(&self, kind: &str, a: &Alert, by: &str) {
        // API actions are audited with their caller by the API; the alert stream's own actions are audited here.
        if by != "api" {
            self.audit.append(crate::audit::AuditEntry {
                actor: by.to_string(),
                action: format!("alert.{kind}"),
                tenant: Some(a.tenant_id.clone()),
                subject: format!("alert/{}", a.id),
                outcome: a.status.as_str().to_string(),
            });
        }
        let t = Transition { kind: kind.to_string(), alert: a.clone(), by: by.to_string() };
        let Ok(payload) = serde_json::to_vec(&t) else { return };
        let headers = OwnedHeaders::new()
            .insert(Header { key: "tenant_id", value: Some(a.tenant_id.as_str()) })
            .insert(Header { key: "transition", value: Some(kind) });
        if let Err(e) = self.kafka.send(&self.topic, &a.id, &payload, headers, false).await {
            tracing::warn!(error = %e, "alert transition not published");
        }
    }

    /// Applies a policy match: opens, updates, re-opens or suppresses the alert of the group. Idempotent per
    /// event: a redelivered event changes nothing.
    pub async fn raise(&self, f: Firing<'_>) -> Result<Raised, AlertStoreError> {
        let id = alert_id(f.tenant, f.policy_id, f.group_key);
        let t = f.tenant.as_str().to_string();
        let seen_key = format!("evstream:{t}:alert:{id}:event:{}", f.event_id);
        let mut seen = redis::cmd("SET");
        seen.arg(&seen_key).arg(1).arg("NX").arg("EX").arg(86_400);
        let first: Option<String> = self.redis.query(&seen).await?;
        if first.is_none() {
            return Ok(Raised::Seen);
        }
        let r = self.raise_new(f, &id, &t).await;
        if r.is_err() {
            // Not applied: forget the event, so that its redelivery raises it.
            let _: Result<(), _> = self.redis.query(&*redis::cmd("DEL").arg(&seen_key)).await;
        }
        r
    }

    async fn raise_new(&self, f: Firing<'_>, id: &str, t: &str) -> Result<Raised, AlertStoreError> {
        let id = id.to_string();
        let now = now_rfc3339();
        let existing = self.get(t, &id).await?;
        if let Some(mut a) =
            existing.clone().filter(|a| matches!(a.status, AlertStatus::Active | AlertStatus::Acknowledged))
        {
            a.count += 1;
            a.last_seen = now.clone();
            a.last_event_id = f.event_id.to_string();
            a.summary = f.summary;
            a.message = f.message;
            self.put(
                &a,
                &HistoryEntry {
                    at: now,
                    kind: "updated".into(),
                    receiver: None,
                    status: None,
                    detail: Some(format!("event {}", f.event_id)),
                },
            )
            .await?;
            return Ok(Raised::Updated(a));
        }
        let mut a = Alert {
            id: id.clone(),
            tenant_id: t.to_string(),
            policy_id: f.policy_id.to_string(),
            group_key: f.group_key.to_string(),
            status: AlertStatus::Active,
            severity: f.severity,
            summary: f.summary,
            message: f.message,
            // A suppressed alert is raised again (and may now be notified); it keeps its history and count.
            count: existing.as_ref().filter(|e| e.status == AlertStatus::Suppressed).map_or(1, |e| e.count + 1),
            first_seen: existing
                .as_ref()
                .filter(|e| e.status == AlertStatus::Suppressed)
                .map_or_else(|| now.clone(), |e| e.first_seen.clone()),
            last_seen: now.clone(),
            reason: None,
            last_event_id: f.event_id.to_string(),
        };
        // Throttle: a group that was notified within the window is raised silently.
        let mut suppressed = f.mute;
        if suppressed.is_none() && f.throttle_minutes > 0 {
            let window_ms = u64::from(f.throttle_minutes) * 60_000;
            let mut inv = THROTTLE.prepare_invoke();
            inv.key(format!("evstream:{t}:alert:{id}:throttle")).arg(f.at_ms).arg(window_ms);
            let notify: i64 = self.redis.query(&inv).await?;
            if notify == 0 {
                suppressed = Some("throttled");
            }
        }
        if let (None, Some(max)) = (suppressed, f.max_alerts_per_hour) {
            let hour = f.at_ms.div_euclid(3_600_000);
            let mut pipe = redis::pipe();
            let k = format!("evstream:{t}:policy:{}:opened:{hour}", f.policy_id);
            pipe.cmd("INCR").arg(&k).cmd("EXPIRE").arg(&k).arg(3600).ignore();
            let (n,): (u64,) = self.redis.query(&pipe).await?;
            if n > u64::from(max) {
                suppressed = Some("max_alerts_per_hour");
            }
        }
        let kind = if existing.is_some() { "reopened" } else { "opened" };
        if let Some(reason) = suppressed {
            a.status = AlertStatus::Suppressed;
            a.reason = Some(reason.to_string());
            self.put(
                &a,
                &HistoryEntry {
                    at: now,
                    kind: "suppressed".into(),
                    receiver: None,
                    status: None,
                    detail: Some(reason.into()),
                },
            )
            .await?;
            self.publish("suppressed", &a, "policy").await;
            return Ok(Raised::Suppressed(a));
        }
        self.put(
            &a,
            &HistoryEntry {
                at: now,
                kind: kind.into(),
                receiver: None,
                status: None,
                detail: Some(format!("event {}", f.event_id)),
            },
        )
        .await?;
        self.publish(kind, &a, "policy").await;
        Ok(Raised::Opened { alert: a, reopened: existing.is_some() })
    }

    /// Acknowledges or resolves an alert from the API; publishes the transition (the alert stream forwards it to
    /// PagerDuty with the same dedup key). Returns `None` when there is no such alert.
    pub async fn transition(&self, tenant: &str, id: &str, to: AlertStatus) -> Result<Option<Alert>, AlertStoreError> {
        Ok(self.transition_by(tenant, id, to, "api").await?.map(|(a, _)| a))
    }

    /// Moves an alert to `to` on behalf of `by` (`api`, or `policy` for resolve conditions and auto-resolve).
    /// Returns the alert and whether it changed; a resolved alert stays resolved until a new event re-opens it.
    pub async fn transition_by(
        &self,
        tenant: &str,
        id: &str,
        to: AlertStatus,
        by: &str,
    ) -> Result<Option<(Alert, bool)>, AlertStoreError> {
        let Some(mut a) = self.get(tenant, id).await? else { return Ok(None) };
        if a.status == to || a.status == AlertStatus::Resolved {
            return Ok(Some((a, false)));
        }
        a.status = to;
        let now = now_rfc3339();
        self.put(
            &a,
            &HistoryEntry {
                at: now,
                kind: to.as_str().into(),
                receiver: None,
                status: None,
                detail: Some(format!("by {by}")),
            },
        )
        .await?;
        self.publish(to.as_str(), &a, by).await;
        Ok(Some((a, true)))
    }

    /// Records that an absence policy saw a matching event now.
    pub async fn heartbeat(&self, tenant: &str, policy: &str) -> Result<(), AlertStoreError> {
        let mut c = redis::cmd("SET");
        c.arg(format!("evstream:{tenant}:absence:{policy}")).arg(now_ms());
        Ok(self.redis.query(&c).await?)
    }

    /// When an absence policy last saw a matching event (milliseconds since the epoch).
    pub async fn last_heartbeat(&self, tenant: &str, policy: &str) -> Result<Option<i64>, AlertStoreError> {
        let mut c = redis::cmd("GET");
        c.arg(format!("evstream:{tenant}:absence:{policy}"));
        Ok(self.redis.query(&c).await?)
    }

    /// A lease for work that one instance should do at a time (the auto-resolve sweep): true when this caller
    /// holds it for `ttl_secs`.
    pub async fn lease(&self, name: &str, ttl_secs: u64) -> bool {
        let mut c = redis::cmd("SET");
        c.arg(format!("evstream:lease:{name}")).arg(1).arg("NX").arg("EX").arg(ttl_secs.max(1));
        matches!(self.redis.query::<Option<String>>(&c).await, Ok(Some(_)))
    }

    /// Filters a list by the query's `status`, `severity` and `policy`.
    pub fn filter(alerts: Vec<Alert>, q: &HashMap<String, String>) -> Vec<Alert> {
        alerts
            .into_iter()
            .filter(|a| q.get("status").is_none_or(|s| AlertStatus::parse(s) == Some(a.status)))
            .filter(|a| {
                q.get("severity").is_none_or(|s| {
                    serde_json::to_value(a.severity).ok().and_then(|v| v.as_str().map(|x| x == s)).unwrap_or(false)
                })
            })
            .filter(|a| q.get("policy").is_none_or(|p| *p == a.policy_id))
            .collect()
    }
}
