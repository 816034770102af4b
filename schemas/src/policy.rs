//! Alert policies: the document a tenant stores (`PUT /tenants/{tenant}/policies/{id}`), its validation, and the
//! compiled form that the alert stream evaluates.
//!
//! ```json
//! { "name": "High risk from Archer", "eventTypes": ["RISK_CREATED", "RISK_UPDATED"],
//!   "condition": {"matchAll": true, "rules": [
//!       {"field": "data.riskScore", "operator": "gte", "value": 80},
//!       {"matchAll": false, "rules": [
//!           {"field": "source", "operator": "eq", "value": "ARCHER_GRC"},
//!           {"field": "data.owner", "operator": "regex", "value": "^sec", "caseSensitive": false}]}]},
//!   "severity": "high", "summaryTemplate": "Risk {entityId} scored {data.riskScore}",
//!   "messageTemplate": "{data.title} (owner {data.owner})", "groupBy": ["entityId"],
//!   "throttleMinutes": 10, "maxAlertsPerHour": 20, "receivers": ["oncall-webhook"] }
//! ```
//!
//! Compilation ([`CompiledPolicy::compile`]) happens once per stored version: paths are split, regexes built,
//! strings lower-cased for case-insensitive rules, and numbers parsed, so that evaluating an event walks the rule
//! tree without parsing or allocating. [`PolicySet`] indexes a tenant's policies by event type.

use crate::catalog::EventType;
use crate::field::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;

mod plan;

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// Deepest nesting of rule groups.
pub const MAX_DEPTH: usize = 8;
/// Most rules (and groups) in one policy.
pub const MAX_RULES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Eq,
    Ne,
    Gt,
    Lt,
    Gte,
    Lte,
    In,
    NotIn,
    Contains,
    Regex,
    Exists,
}

/// One comparison on one field of the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub field: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    #[serde(default = "yes")]
    pub case_sensitive: bool,
}

/// A group of rules and groups: all must hold (`matchAll`, the default) or any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default = "yes")]
    pub match_all: bool,
    pub rules: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Node {
    Group(Condition),
    Rule(Rule),
}

fn yes() -> bool {
    true
}

/// A tenant's alert policy as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertPolicy {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Only events of these types are evaluated (empty: every type).
    #[serde(default)]
    pub event_types: Vec<EventType>,
    pub condition: Condition,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_template: Option<String>,
    /// Events with equal values at these paths update one alert instead of opening new ones.
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default)]
    pub throttle_minutes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_alerts_per_hour: Option<u32>,
    /// Names of the tenant's receivers to notify.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// An event matching this (e.g. a Grafana/Alertmanager `resolved` event) resolves the open alert of its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_condition: Option<Condition>,
    /// When the policy is active (any of the windows); none: always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_windows: Vec<TimeWindow>,
    /// An absence policy ("dead man's switch"): it alerts when no event matching the condition arrived for this
    /// long, and resolves when one arrives. Matching events do not raise alerts themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absence_secs: Option<u32>,
    /// Resolve an alert that saw no matching event for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resolve_after_secs: Option<u32>,
}

/// Days and hours in which a policy is active, in a named time zone (`Europe/Berlin`, daylight saving included) or
/// at a fixed UTC offset (`+01:00`). `end` before `start` spans midnight (`22:00`-`06:00`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    /// `mon` .. `sun`; empty: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`.
    pub start: String,
    pub end: String,
    #[serde(default = "utc")]
    pub utc_offset: String,
    /// An IANA time zone; when set it decides (and `utcOffset` must be left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

fn utc() -> String {
    "+00:00".into()
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

fn offset_minutes(s: &str) -> Option<i32> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let m = hhmm(s.get(1..)?)? as i32;
    (m <= 14 * 60).then_some(sign * m)
}

impl TimeWindow {
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if hhmm(&self.start).is_none() {
            return Err(("start", "HH:MM"));
        }
        if hhmm(&self.end).is_none() {
            return Err(("end", "HH:MM"));
        }
        if offset_minutes(&self.utc_offset).is_none() {
            return Err(("utcOffset", "+HH:MM or -HH:MM, at most 14 hours"));
        }
        if let Some(tz) = &self.time_zone {
            if tz.len() > 64 || jiff::tz::TimeZone::get(tz).is_err() {
                return Err(("timeZone", "an IANA time zone name such as Europe/Berlin"));
            }
            if self.utc_offset != utc() {
                return Err(("utcOffset", "leave it out when timeZone is set"));
            }
        }
        if !self.days.iter().all(|d| DAYS.contains(&d.as_str())) {
            return Err(("days", "mon, tue, wed, thu, fri, sat, sun"));
        }
        Ok(())
    }

    /// Is `now` inside this window?
    pub fn contains(&self, now: time::OffsetDateTime) -> bool {
        let (Some(start), Some(end), Some(off)) =
            (hhmm(&self.start), hhmm(&self.end), offset_minutes(&self.utc_offset))
        else {
            return false;
        };
        // Local minute of the day and weekday (0 = Monday).
        let (minute, weekday) = match &self.time_zone {
            Some(name) => {
                let (Ok(tz), Ok(ts)) =
                    (jiff::tz::TimeZone::get(name), jiff::Timestamp::from_second(now.unix_timestamp()))
                else {
                    return false;
                };
                let local = ts.to_zoned(tz);
                (local.hour() as u32 * 60 + local.minute() as u32, local.weekday().to_monday_zero_offset() as usize)
            }
            None => {
                let Ok(offset) = time::UtcOffset::from_whole_seconds(off * 60) else { return false };
                let local = now.to_offset(offset);
                (
                    u32::from(local.hour()) * 60 + u32::from(local.minute()),
                    local.weekday().number_days_from_monday() as usize,
                )
            }
        };
        let day = DAYS[weekday % 7];
        // A window spanning midnight belongs to the day it starts on.
        let (in_time, day_of_start) = if start <= end {
            (minute >= start && minute < end, day)
        } else if minute >= start {
            (true, day)
        } else {
            (minute < end, DAYS[(weekday + 6) % 7])
        };
        in_time && (self.days.is_empty() || self.days.iter().any(|d| d == day_of_start))
    }
}

impl AlertPolicy {
    /// Is the policy active at `now` (no windows: always)?
    pub fn active_at(&self, now: time::OffsetDateTime) -> bool {
        self.active_windows.is_empty() || self.active_windows.iter().any(|w| w.contains(now))
    }
}

/// Built-in policy packs a tenant can enable: `(pack, [(policy id, policy document)])`. Receivers are added when
/// the pack is enabled.
pub fn packs() -> Vec<(&'static str, Vec<(&'static str, Value)>)> {
    use serde_json::json;
    let threshold = |name: &str, metric: &str, value: f64, severity: &str| {
        json!({"name": name, "eventTypes": ["RESOURCE_METRIC"], "severity": severity, "groupBy": ["data.resourceId", "data.metric"],
               "throttleMinutes": 15, "summaryTemplate": format!("{name}: {{data.resourceId}} at {{data.value}}{{data.unit}}"),
               "condition": {"rules": [{"field": "data.metric", "operator": "eq", "value": metric, "caseSensitive": false},
                                       {"field": "data.value", "operator": "gt", "value": value}]}})
    };
    vec![
        (
            "resource-thresholds",
            vec![
                ("pack-resource-cpu", threshold("CPU above 90%", "cpu", 90.0, "high")),
                ("pack-resource-memory", threshold("Memory above 85%", "memory", 85.0, "high")),
                ("pack-resource-storage", threshold("Storage above 90%", "storage", 90.0, "high")),
                ("pack-resource-network", threshold("Network errors above 5%", "network_errors", 5.0, "medium")),
            ],
        ),
        (
            "security",
            vec![
                (
                    "pack-security-unauthorized",
                    json!({"name": "Unauthorized access", "eventTypes": ["SECURITY_EVENT", "AUDIT_EVENT"], "severity": "critical",
                    "groupBy": ["data.principal"], "throttleMinutes": 5, "summaryTemplate": "Unauthorized access by {data.principal}",
                    "condition": {"matchAll": false, "rules": [{"field": "data.outcome", "operator": "in", "value": ["denied", "failure"]},
                                                             {"field": "data.auditEventType", "operator": "in", "value": ["unauthorized_access", "login_failed"]}]}}),
                ),
                (
                    "pack-security-config-change",
                    json!({"name": "Configuration change", "eventTypes": ["SECURITY_EVENT", "AUDIT_EVENT"], "severity": "medium",
                    "groupBy": ["data.resourceId"], "summaryTemplate": "Configuration of {data.resourceId} changed by {data.principal}",
                    "condition": {"rules": [{"field": "data.auditEventType", "operator": "regex", "value": "config(uration)?_chang", "caseSensitive": false}]}}),
                ),
            ],
        ),
        (
            "platform-health",
            vec![
                (
                    "pack-health-error-rate",
                    json!({"name": "Error rate above 5%", "eventTypes": ["SYSTEM_PERFORMANCE", "SYSTEM_ERROR"], "severity": "high",
                    "groupBy": ["data.component"], "throttleMinutes": 10, "summaryTemplate": "{data.component}: error rate {data.errorRate}%",
                    "condition": {"rules": [{"field": "data.errorRate", "operator": "gt", "value": 5}]}}),
                ),
                (
                    "pack-health-delay",
                    json!({"name": "Processing delay above 30 s", "eventTypes": ["SYSTEM_PERFORMANCE"], "severity": "high",
                    "groupBy": ["data.component"], "throttleMinutes": 10, "summaryTemplate": "{data.component}: processing delay {data.processingDelaySecs} s",
                    "condition": {"rules": [{"field": "data.processingDelaySecs", "operator": "gt", "value": 30}]}}),
                ),
                (
                    "pack-health-destinations",
                    json!({"name": "Failed destination", "eventTypes": ["SYSTEM_ERROR"], "severity": "critical",
                    "groupBy": ["data.destination"], "throttleMinutes": 10, "summaryTemplate": "Destination {data.destination} failing",
                    "condition": {"rules": [{"field": "data.destination", "operator": "exists"}]}}),
                ),
            ],
        ),
    ]
}

/// Policy and receiver ids: 1-64 of lower-case letters, digits and `-`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl AlertPolicy {
    /// Parses and checks a policy document; every problem names its field (`condition.rules[1].rules[0].value`).
    pub fn from_json(v: Value) -> Result<Self, Vec<FieldError>> {
        let p: AlertPolicy = crate::field::deserialize(v, "")?;
        let mut errs = Vec::new();
        if p.name.trim().is_empty() || p.name.len() > 200 {
            errs.push(FieldError::new("name", "invalid_value", "name must be 1-200 characters"));
        }
        for (i, g) in p.group_by.iter().enumerate() {
            if Path::parse(g).is_none() {
                errs.push(FieldError::new(
                    format!("groupBy[{i}]"),
                    "invalid_path",
                    "a dot path into the event, e.g. `entityId`",
                ));
            }
        }
        for (i, r) in p.receivers.iter().enumerate() {
            if !valid_id(r) {
                errs.push(FieldError::new(
                    format!("receivers[{i}]"),
                    "invalid_id",
                    "receiver ids are 1-64 of a-z, 0-9 and -",
                ));
            }
        }
        if p.max_alerts_per_hour == Some(0) {
            errs.push(FieldError::new("maxAlertsPerHour", "out_of_range", "at least 1 (leave it out for no limit)"));
        }
        if let Err(mut e) = CompiledPolicy::compile_node(&Node::Group(p.condition.clone()), "condition", 0, &mut 0) {
            errs.append(&mut e);
        }
        if let Some(rc) = &p.resolve_condition {
            if let Err(mut e) = CompiledPolicy::compile_node(&Node::Group(rc.clone()), "resolveCondition", 0, &mut 0) {
                errs.append(&mut e);
            }
        }
        for (i, w) in p.active_windows.iter().enumerate() {
            if let Err(e) = w.check() {
                errs.push(FieldError::new(format!("activeWindows[{i}].{}", e.0), "invalid_value", e.1));
            }
        }
        if p.absence_secs == Some(0) {
            errs.push(FieldError::new("absenceSecs", "out_of_range", "at least 1"));
        }
        if p.auto_resolve_after_secs == Some(0) {
            errs.push(FieldError::new(
                "autoResolveAfterSecs",
                "out_of_range",
                "at least 1 (leave it out to never auto-resolve)",
            ));
        }
        if errs.is_empty() {
            Ok(p)
        } else {
            Err(errs)
        }
    }
}

/// Where a path starts: the envelope's top-level fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    segments: Vec<String>,
}

impl Path {
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 256 {
            return None;
        }
        let segments: Vec<String> = s.split('.').map(str::to_string).collect();
        segments.iter().all(|p| !p.is_empty()).then_some(Self { segments })
    }

    /// The path as one string, for telling paths apart in maps (segments never contain `.`).
    fn key(&self) -> String {
        self.segments.join(".")
    }

    /// The value at this path in an event's JSON form; arrays are indexed by number.
    pub fn get<'a>(&self, event: &'a Value) -> Option<&'a Value> {
        let mut cur = event;
        for seg in &self.segments {
            cur = match cur {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

#[derive(Debug, Clone)]
enum Operand {
    None,
    Number(f64),
    /// Lower-cased when the rule is case-insensitive.
    Text(String),
    Json(Value),
    List(Vec<Operand>),
    Pattern(regex::Regex),
}

#[derive(Debug, Clone)]
enum Compiled {
    Group {
        all: bool,
        children: Vec<Compiled>,
    },
    /// `at` is where the rule stands in the document (`condition.rules[1].rules[0]`), for traces.
    Rule {
        path: Path,
        op: Operator,
        operand: Operand,
        case_sensitive: bool,
        at: String,
    },
}

/// A policy ready for evaluation.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub id: String,
    pub policy: AlertPolicy,
    root: Compiled,
    resolve: Option<Compiled>,
    group_by: Vec<Path>,
}

/// Why a rule matched or not, for `POST .../policies/{id}/test`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleTrace {
    pub path: String,
    pub field: String,
    pub operator: Operator,
    pub matched: bool,
}

fn operand(v: &Value, case_sensitive: bool) -> Operand {
    match v {
        Value::Null => Operand::None,
        Value::Number(n) => n.as_f64().map_or(Operand::Json(v.clone()), Operand::Number),
        Value::String(s) if case_sensitive => Operand::Text(s.clone()),
        Value::String(s) => Operand::Text(fold(s).into_owned()),
        other => Operand::Json(other.clone()),
    }
}

impl CompiledPolicy {
    pub fn compile(id: &str, policy: AlertPolicy) -> Result<Self, Vec<FieldError>> {
        let root = Self::compile_node(&Node::Group(policy.condition.clone()), "condition", 0, &mut 0)?;
        let resolve = match &policy.resolve_condition {
            Some(c) => Some(Self::compile_node(&Node::Group(c.clone()), "resolveCondition", 0, &mut 0)?),
            None => None,
        };
        let group_by = policy.group_by.iter().filter_map(|g| Path::parse(g)).collect();
        Ok(Self { id: id.to_string(), policy, root, resolve, group_by })
    }

    /// The alert's summary for an event: the rendered `summaryTemplate`, else the policy's name.
    pub fn summary(&self, event: &Value) -> String {
        self.policy.summary_template.as_deref().map_or_else(|| self.policy.name.clone(), |t| render(t, event))
    }

    /// The alert's message for an event: the rendered `messageTemplate`, if any.
    pub fn message(&self, event: &Value) -> Option<String> {
        self.policy.message_template.as_deref().map(|t| render(t, event))
    }

    fn compile_node(n: &Node, at: &str, depth: usize, count: &mut usize) -> Result<Compiled, Vec<FieldError>> {
        *count += 1;
        if *count > MAX_RULES {
            return Err(vec![FieldError::new(at, "too_many", format!("at most {MAX_RULES} rules and groups"))]);
        }
        match n {
            Node::Group(g) => {
                if depth >= MAX_DEPTH {
                    return Err(vec![FieldError::new(at, "too_deep", format!("groups nest at most {MAX_DEPTH} deep"))]);
                }
                if g.rules.is_empty() {
                    return Err(vec![FieldError::new(
                        format!("{at}.rules"),
                        "empty",
                        "a group needs at least one rule",
                    )]);
                }
                let mut errs = Vec::new();
                let mut children = Vec::with_capacity(g.rules.len());
                for (i, r) in g.rules.iter().enumerate() {
                    match Self::compile_node(r, &format!("{at}.rules[{i}]"), depth + 1, count) {
                        Ok(c) => children.push(c),
                        Err(mut e) => errs.append(&mut e),
                    }
                }
                if errs.is_empty() {
                    // Rules are pure, so their order does not change the verdict: cheap ones first let AND and OR
                    // groups stop early. (`trace` reports in this order too, with each rule's path.)
                    children.sort_by_key(cost);
                    Ok(Compiled::Group { all: g.match_all, children })
                } else {
                    Err(errs)
                }
            }
            Node::Rule(r) => {
                let path = Path::parse(&r.field).ok_or_else(|| {
                    vec![FieldError::new(
                        format!("{at}.field"),
                        "invalid_path",
                        "a dot path into the event, e.g. `data.score`",
                    )]
                })?;
                let bad =
                    |msg: &str| Err(vec![FieldError::new(format!("{at}.value"), "invalid_value", msg.to_string())]);
                let operand = match r.operator {
                    Operator::Exists => Operand::None,
                    Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte => match r.value.as_f64() {
                        Some(n) => Operand::Number(n),
                        None => return bad("gt, lt, gte and lte compare with a number"),
                    },
                    Operator::In | Operator::NotIn => match &r.value {
                        Value::Array(a) if !a.is_empty() && a.len() <= 1000 => {
                            Operand::List(a.iter().map(|v| operand(v, r.case_sensitive)).collect())
                        }
                        _ => return bad("in and not_in take a list of 1-1000 values"),
                    },
                    Operator::Regex => match r.value.as_str() {
                        Some(p) => match regex::RegexBuilder::new(p)
                            .case_insensitive(!r.case_sensitive)
                            .size_limit(1 << 20)
                            .build()
                        {
                            Ok(re) => Operand::Pattern(re),
                            Err(e) => return bad(&format!("not a valid regular expression: {e}")),
                        },
                        None => return bad("regex takes a pattern string"),
                    },
                    Operator::Eq | Operator::Ne | Operator::Contains => {
                        if r.value.is_null() {
                            return bad("this operator needs a value");
                        }
                        operand(&r.value, r.case_sensitive)
                    }
                };
                Ok(Compiled::Rule {
                    path,
                    op: r.operator,
                    operand,
                    case_sensitive: r.case_sensitive,
                    at: at.to_string(),
                })
            }
        }
    }

    /// Does the event (its JSON envelope) satisfy the policy? Checks the event type and `enabled` too.
    pub fn matches(&self, event: &Value) -> bool {
        self.policy.enabled && self.applies_to(event) && eval(&self.root, event)
    }

    fn applies_to(&self, event: &Value) -> bool {
        self.policy.event_types.is_empty() || event_type(event).is_some_and(|t| self.policy.event_types.contains(&t))
    }

    /// Every rule's verdict, depth first, for explaining a test evaluation.
    pub fn trace(&self, event: &Value) -> (bool, Vec<RuleTrace>) {
        let mut out = Vec::new();
        let m = trace(&self.root, event, &mut out);
        // In document order, whatever order evaluation uses.
        out.sort_by_key(|t| doc_order(&t.path));
        (self.policy.enabled && self.applies_to(event) && m, out)
    }

    /// The group key of an event: the `groupBy` values joined (missing values render as `-`).
    pub fn group_key(&self, event: &Value) -> String {
        let parts: Vec<String> =
            self.group_by.iter().map(|p| p.get(event).map_or_else(|| "-".to_string(), scalar_text)).collect();
        parts.join("|")
    }
}

/// `condition.rules[1].rules[0]` -> [1, 0], for sorting traces in document order.
fn doc_order(path: &str) -> Vec<usize> {
    path.split('[').skip(1).filter_map(|p| p.split(']').next()?.parse().ok()).collect()
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A rough relative cost of evaluating a node.
fn cost(c: &Compiled) -> u32 {
    match c {
        Compiled::Group { children, .. } => children.iter().map(cost).sum::<u32>() + 1,
        Compiled::Rule { op, path, case_sensitive, operand, .. } => {
            rule_cost(*op, operand, *case_sensitive) + path.segments.len() as u32
        }
    }
}

/// A rough relative cost of one rule's comparison, for putting cheap rules first in a group.
fn rule_cost(op: Operator, operand: &Operand, case_sensitive: bool) -> u32 {
    match op {
        Operator::Exists => 1,
        Operator::Eq | Operator::Ne | Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte => 2,
        Operator::In | Operator::NotIn => 3 + matches!(operand, Operand::List(l) if l.len() > 8) as u32 * 3,
        Operator::Contains => 4 + u32::from(!case_sensitive) * 4,
        Operator::Regex => 12,
    }
}

fn eval(c: &Compiled, e: &Value) -> bool {
    match c {
        Compiled::Group { all: true, children } => children.iter().all(|c| eval(c, e)),
        Compiled::Group { all: false, children } => children.iter().any(|c| eval(c, e)),
        Compiled::Rule { path, op, operand, case_sensitive, .. } => rule(path.get(e), *op, operand, *case_sensitive),
    }
}

fn trace(c: &Compiled, e: &Value, out: &mut Vec<RuleTrace>) -> bool {
    match c {
        Compiled::Group { all, children } => {
            // Every child is traced (no short cut), so that the answer explains each rule.
            let results: Vec<bool> = children.iter().map(|c| trace(c, e, out)).collect();
            if *all {
                results.iter().all(|r| *r)
            } else {
                results.iter().any(|r| *r)
            }
        }
        Compiled::Rule { path, op, operand, case_sensitive, at } => {
            let matched = rule(path.get(e), *op, operand, *case_sensitive);
            out.push(RuleTrace { path: at.clone(), field: path.key(), operator: *op, matched });
            matched
        }
    }
}

/// Case folding for case-insensitive rules: each character lower-cased on its own, the same way for operands (at
/// compile time) and for values (per event). (`str::to_lowercase` treats a final sigma apart, which a per-character
/// comparison would not match.)
fn fold(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| c.to_lowercase().eq(std::iter::once(c))) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().flat_map(char::to_lowercase).collect())
    }
}

/// `a == b` for text; when case-insensitive, the operand is already lower-cased and the value is folded on the fly.
fn text_eq(value: &str, operand: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        value == operand
    } else {
        value.chars().flat_map(char::to_lowercase).eq(operand.chars())
    }
}

/// Substring test without allocating: at each character boundary, compare the folded value with the operand.
fn text_contains(value: &str, operand: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        return value.contains(operand);
    }
    value.char_indices().map(|(i, _)| i).chain(std::iter::once(value.len())).any(|i| {
        let mut folded = value[i..].chars().flat_map(char::to_lowercase);
        operand.chars().all(|c| folded.next() == Some(c))
    })
}

fn equals(v: &Value, o: &Operand, cs: bool) -> bool {
    match (v, o) {
        (Value::Number(n), Operand::Number(x)) => n.as_f64() == Some(*x),
        (Value::String(s), Operand::Text(t)) => text_eq(s, t, cs),
        (v, Operand::Json(j)) => v == j,
        _ => false,
    }
}

fn rule(v: Option<&Value>, op: Operator, o: &Operand, cs: bool) -> bool {
    if op == Operator::Exists {
        return v.is_some_and(|v| !v.is_null());
    }
    let Some(v) = v else {
        // A missing field matches only the negative operators.
        return matches!(op, Operator::Ne | Operator::NotIn);
    };
    match (op, o) {
        (Operator::Eq, o) => equals(v, o, cs),
        (Operator::Ne, o) => !equals(v, o, cs),
        (Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte, Operand::Number(x)) => match v.as_f64() {
            Some(n) => match op {
                Operator::Gt => n > *x,
                Operator::Lt => n < *x,
                Operator::Gte => n >= *x,
                _ => n <= *x,
            },
            None => false,
        },
        (Operator::In, Operand::List(l)) => l.iter().any(|o| equals(v, o, cs)),
        (Operator::NotIn, Operand::List(l)) => !l.iter().any(|o| equals(v, o, cs)),
        (Operator::Contains, o) => match (v, o) {
            (Value::String(s), Operand::Text(t)) => text_contains(s, t, cs),
            (Value::Array(a), o) => a.iter().any(|x| equals(x, o, cs)),
            _ => false,
        },
        (Operator::Regex, Operand::Pattern(re)) => v.as_str().is_some_and(|s| re.is_match(s)),
        _ => false,
    }
}

/// Renders `{path}` placeholders from the event. A missing field renders visibly as `{path:missing}`; `{{` and
/// `}}` are literal braces.
pub fn render(template: &str, event: &Value) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        match tail[1..].find('}') {
            Some(end) => {
                let name = &tail[1..1 + end];
                match Path::parse(name).and_then(|p| p.get(event).cloned()) {
                    Some(Value::Null) | None => {
                        out.push('{');
                        out.push_str(name);
                        out.push_str(":missing}");
                    }
                    Some(v) => out.push_str(&scalar_text(&v)),
                }
                rest = &tail[end + 2..];
            }
            None => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A tenant's compiled policies, indexed by the event types they apply to.
///
/// For evaluation the conditions of all policies are hash-consed into one graph: identical rules (same field,
/// operator, operand and case folding) share one node, identical groups (same kind, same children) too, and so do
/// identical field paths. Each event type then has a [`plan::Plan`] over the policies of that type, and one more
/// plan holds the policies of every type. A plan evaluates each distinct node at most once per event, and decides
/// the thresholds, equality tests and patterns on one field together (one binary search, one hash lookup, one
/// pattern-set scan), so that policies with nothing in common still cost little each.
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    by_type: HashMap<EventType, Vec<usize>>,
    any_type: Vec<usize>,
    plans: HashMap<EventType, plan::Plan>,
    any_type_plan: plan::Plan,
    distinct_rules: usize,
    distinct_nodes: usize,
}

#[derive(Debug, Clone)]
enum SharedNode {
    Rule { path: usize, op: Operator, operand: Operand, case_sensitive: bool },
    Group { all: bool, children: Vec<usize> },
}

#[derive(Default)]
struct Interner {
    nodes: Vec<SharedNode>,
    node_ids: HashMap<String, usize>,
    paths: Vec<Path>,
    path_ids: HashMap<String, usize>,
    rules: usize,
}

impl Interner {
    fn intern(&mut self, key: String, make: impl FnOnce() -> SharedNode) -> usize {
        let next = self.nodes.len();
        let id = *self.node_ids.entry(key).or_insert(next);
        if id == next {
            self.nodes.push(make());
        }
        id
    }

    fn node(&mut self, c: &Compiled) -> usize {
        match c {
            Compiled::Group { all, children } => {
                let ids: Vec<usize> = children.iter().map(|c| self.node(c)).collect();
                let key = format!("G{all}:{ids:?}");
                self.intern(key, || SharedNode::Group { all: *all, children: ids.clone() })
            }
            Compiled::Rule { path, op, operand, case_sensitive, .. } => {
                let name = path.key();
                let next_path = self.paths.len();
                let path_id = *self.path_ids.entry(name.clone()).or_insert(next_path);
                if path_id == next_path {
                    self.paths.push(path.clone());
                }
                let key = format!("R{name}\u{1e}{op:?}\u{1e}{case_sensitive}\u{1e}{operand:?}");
                let before = self.nodes.len();
                let id = self.intern(key, || SharedNode::Rule {
                    path: path_id,
                    op: *op,
                    operand: operand.clone(),
                    case_sensitive: *case_sensitive,
                });
                self.rules += usize::from(self.nodes.len() > before);
                id
            }
        }
    }
}

impl PolicySet {
    pub fn new(policies: Vec<CompiledPolicy>) -> Self {
        let mut interner = Interner::default();
        let roots: Vec<usize> = policies.iter().map(|p| interner.node(&p.root)).collect();
        let mut s = Self {
            distinct_rules: interner.rules,
            distinct_nodes: interner.nodes.len(),
            policies,
            ..Default::default()
        };
        for (i, p) in s.policies.iter().enumerate() {
            if p.policy.event_types.is_empty() {
                s.any_type.push(i);
            } else {
                for t in &p.policy.event_types {
                    let of_type = s.by_type.entry(*t).or_default();
                    // A type listed twice is one entry.
                    if of_type.last() != Some(&i) {
                        of_type.push(i);
                    }
                }
            }
        }
        // Disabled policies are candidates (their resolve conditions still apply) but never match.
        let enabled = |ids: &[usize]| -> Vec<(usize, usize)> {
            ids.iter().filter(|i| s.policies[**i].policy.enabled).map(|i| (*i, roots[*i])).collect()
        };
        let plans = s
            .by_type
            .iter()
            .map(|(t, ids)| (*t, plan::Plan::new(enabled(ids), &interner.nodes, &interner.paths)))
            .collect();
        let any_type_plan = plan::Plan::new(enabled(&s.any_type), &interner.nodes, &interner.paths);
        s.plans = plans;
        s.any_type_plan = any_type_plan;
        s
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The distinct rules of all policies.
    pub fn distinct_rules(&self) -> usize {
        self.distinct_rules
    }

    /// The distinct rules and groups of all policies.
    pub fn distinct_nodes(&self) -> usize {
        self.distinct_nodes
    }

    /// The indexes of the policies that apply to the event's type: those indexed for it, then the untyped ones.
    fn candidate_ids<'a>(&'a self, event: &Value) -> impl Iterator<Item = usize> + 'a {
        let typed: &[usize] = event_type(event).and_then(|t| self.by_type.get(&t)).map_or(&[], Vec::as_slice);
        typed.iter().chain(self.any_type.iter()).copied()
    }

    fn candidates_of<'a>(&'a self, event: &Value) -> impl Iterator<Item = &'a CompiledPolicy> + 'a {
        self.candidate_ids(event).map(|i| &self.policies[i])
    }

    /// How many policies an event is evaluated against.
    pub fn candidates(&self, event: &Value) -> usize {
        self.candidate_ids(event).count()
    }

    /// The policies whose resolve condition the event meets.
    pub fn resolving<'a>(&'a self, event: &'a Value) -> impl Iterator<Item = &'a CompiledPolicy> + 'a {
        self.candidates_of(event).filter(move |p| p.resolve.as_ref().is_some_and(|r| eval(r, event)))
    }

    /// Every policy (for the auto-resolve sweep).
    pub fn all(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// The reference evaluation: each candidate policy on its own (no sharing of rules, paths or batches). Same
    /// answer as [`Self::matching`]; kept for tests and for measuring what the plans gain.
    pub fn matching_one_by_one<'a>(&'a self, event: &'a Value) -> impl Iterator<Item = &'a CompiledPolicy> + 'a {
        self.candidates_of(event).filter(move |p| p.matches(event))
    }

    /// The policies an event matches, in the order of [`Self::candidates`]: the plan of its type, then the plan of
    /// the untyped policies.
    pub fn matching<'a>(&'a self, event: &'a Value) -> impl Iterator<Item = &'a CompiledPolicy> + 'a {
        let typed = event_type(event).and_then(|t| self.plans.get(&t));
        typed
            .into_iter()
            .chain(std::iter::once(&self.any_type_plan))
            .flat_map(move |plan| plan.matching(event))
            .map(|i| &self.policies[i])
    }
}

/// The catalog type of an event envelope, when it has one.
fn event_type(event: &Value) -> Option<EventType> {
    event.get("eventType").and_then(Value::as_str).and_then(EventType::parse)
}

/// The JSON object form of a policy document with its id, for API answers.
pub fn with_id(id: &str, p: &AlertPolicy) -> Map<String, Value> {
    let mut m = match serde_json::to_value(p) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert("id".into(), Value::String(id.to_string()));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Interned evaluation (each distinct rule once per event) gives exactly the verdicts of evaluating each
    /// policy on its own.
    #[test]
    fn interned_set_evaluation_equals_policy_by_policy() {
        let pool = [
            json!({"field": "data.score", "operator": "gte", "value": 50}),
            json!({"field": "data.score", "operator": "lt", "value": 20}),
            json!({"field": "source", "operator": "in", "value": ["AWS", "GCP"]}),
            json!({"field": "data.owner", "operator": "contains", "value": "ops", "caseSensitive": false}),
            json!({"field": "data.owner", "operator": "contains", "value": "ops"}),
            json!({"field": "metadata.region", "operator": "regex", "value": "^eu-"}),
            json!({"field": "data.status", "operator": "ne", "value": "closed"}),
            json!({"field": "data.missing", "operator": "exists"}),
            json!({"field": "data.tags", "operator": "contains", "value": "pci"}),
            json!({"field": "entityId", "operator": "eq", "value": "x-1"}),
        ];
        let mut policies = Vec::new();
        for i in 0..300usize {
            let r = |k: usize| pool[(i * 7 + k * 3) % pool.len()].clone();
            let types: Vec<&str> =
                if i % 5 == 0 { vec![] } else { vec![if i % 2 == 0 { "RISK_CREATED" } else { "CLOUD_ALERT" }] };
            let doc = json!({"name": "p", "severity": "low", "eventTypes": types, "enabled": i % 11 != 0,
                "condition": {"matchAll": i % 2 == 0, "rules": [r(0), {"matchAll": i % 3 == 0, "rules": [r(1), r(2)]}, r(3)]}});
            policies.push(CompiledPolicy::compile(&format!("p{i}"), AlertPolicy::from_json(doc).unwrap()).unwrap());
        }
        let set = PolicySet::new(policies.clone());
        assert!(set.distinct_rules() <= pool.len(), "identical rules share a slot: {}", set.distinct_rules());
        let mut matched = 0;
        for n in 0..400usize {
            let (t, src, owner) = (
                ["RISK_CREATED", "CLOUD_ALERT", "USER_ACTION"][n % 3],
                ["AWS", "AZURE", "GCP"][n % 3],
                ["SecOps", "ops-team", "dev"][n % 3],
            );
            let (status, tag, region) =
                (["open", "closed"][n % 2], ["pci", "sox"][n % 2], ["eu-west-1", "us-east-1"][n % 2]);
            let e = json!({"eventType": t, "source": src, "entityId": format!("x-{}", n % 4),
                "data": {"score": (n * 13) % 100, "owner": owner, "status": status, "tags": [tag]},
                "metadata": {"region": region}});
            let fast: Vec<&str> = set.matching(&e).map(|p| p.id.as_str()).collect();
            let slow: Vec<&str> = set.matching_one_by_one(&e).map(|p| p.id.as_str()).collect();
            assert_eq!(fast, slow, "event {e}");
            matched += fast.len();
        }
        assert!(matched > 100, "the comparison covers matches too ({matched})");
    }

    fn policy(condition: Value) -> CompiledPolicy {
        let p = AlertPolicy::from_json(json!({"name": "p", "severity": "high", "condition": condition})).unwrap();
        CompiledPolicy::compile("p", p).unwrap()
    }

    fn ev() -> Value {
        json!({"tenantId": "t", "eventType": "RISK_CREATED", "source": "ARCHER_GRC", "entityId": "risk-1",
               "data": {"riskScore": 85, "owner": "SecOps Team", "tags": ["pci", "sox"], "nested": {"a": [1, 2]}},
               "metadata": {"region": "eu-west-1"}})
    }

    fn one(field: &str, op: &str, value: Value, cs: bool) -> bool {
        policy(json!({"rules": [{"field": field, "operator": op, "value": value, "caseSensitive": cs}]})).matches(&ev())
    }

    #[test]
    fn every_operator() {
        assert!(one("data.riskScore", "eq", json!(85), true));
        assert!(one("data.riskScore", "eq", json!(85.0), true));
        assert!(!one("data.riskScore", "ne", json!(85), true));
        assert!(one("data.riskScore", "gt", json!(80), true));
        assert!(!one("data.riskScore", "gt", json!(85), true));
        assert!(one("data.riskScore", "gte", json!(85), true));
        assert!(one("data.riskScore", "lt", json!(90), true));
        assert!(one("data.riskScore", "lte", json!(85), true));
        assert!(one("source", "in", json!(["AWS", "ARCHER_GRC"]), true));
        assert!(one("source", "not_in", json!(["AWS"]), true));
        assert!(one("data.owner", "contains", json!("SecOps"), true));
        assert!(!one("data.owner", "contains", json!("secops"), true));
        assert!(one("data.owner", "contains", json!("secops"), false));
        assert!(one("data.tags", "contains", json!("pci"), true));
        assert!(one("data.owner", "regex", json!("^sec"), false));
        assert!(!one("data.owner", "regex", json!("^sec"), true));
        assert!(one("metadata.region", "exists", Value::Null, true));
        assert!(!one("metadata.zone", "exists", Value::Null, true));
        assert!(one("data.nested.a.1", "eq", json!(2), true));
        assert!(one("eventType", "eq", json!("risk_created"), false));
        assert!(!one("eventType", "eq", json!("risk_created"), true));
        // A missing field satisfies only the negative operators.
        assert!(one("data.nope", "ne", json!(1), true));
        assert!(one("data.nope", "not_in", json!([1]), true));
        assert!(!one("data.nope", "eq", json!(1), true));
        assert!(!one("data.nope", "gt", json!(1), true));
    }

    /// Case-insensitive rules fold operands and values the same way, character by character: a final sigma
    /// (`Σ` at the end of a word) matches whatever case it is written in.
    #[test]
    fn case_folding_is_the_same_for_operands_and_values() {
        let e = json!({"data": {"word": "ΟΔΟΣ"}});
        for (op, v) in
            [("eq", json!("οδοσ")), ("eq", json!("ΟΔΟΣ")), ("contains", json!("ΔΟΣ")), ("in", json!(["ΟΔΟΣ"]))]
        {
            let p =
                policy(json!({"rules": [{"field": "data.word", "operator": op, "value": v, "caseSensitive": false}]}));
            assert!(p.matches(&e), "{op} {v}");
            assert_eq!(PolicySet::new(vec![p]).matching(&e).count(), 1, "{op} {v}");
        }
    }

    #[test]
    fn and_or_and_nesting() {
        let p = policy(json!({"matchAll": true, "rules": [
            {"field": "data.riskScore", "operator": "gte", "value": 80},
            {"matchAll": false, "rules": [
                {"field": "source", "operator": "eq", "value": "AWS"},
                {"field": "data.tags", "operator": "contains", "value": "sox"}]}]}));
        assert!(p.matches(&ev()));
        let mut e = ev();
        e["data"]["tags"] = json!([]);
        assert!(!p.matches(&e));
        e["source"] = json!("AWS");
        assert!(p.matches(&e));
        let (m, trace) = p.trace(&e);
        assert!(m);
        assert_eq!(trace.len(), 3);
        assert_eq!(trace[2].path, "condition.rules[1].rules[1]");
        assert!(!trace[2].matched);
    }

    #[test]
    fn invalid_documents_name_the_field() {
        let bad =
            |c: Value| AlertPolicy::from_json(json!({"name": "p", "severity": "high", "condition": c})).unwrap_err();
        assert_eq!(
            bad(json!({"rules": [{"field": "a", "operator": "gt", "value": "x"}]}))[0].field,
            "condition.rules[0].value"
        );
        assert_eq!(
            bad(json!({"rules": [{"field": "a", "operator": "regex", "value": "("}]}))[0].field,
            "condition.rules[0].value"
        );
        assert_eq!(
            bad(json!({"rules": [{"field": "a..b", "operator": "exists"}]}))[0].field,
            "condition.rules[0].field"
        );
        assert_eq!(bad(json!({"rules": [{"matchAll": false, "rules": []}]}))[0].field, "condition.rules[0].rules");
        let mut deep = json!({"field": "a", "operator": "exists"});
        for _ in 0..10 {
            deep = json!({"rules": [deep]});
        }
        assert_eq!(bad(deep)[0].code, "too_deep");
        let e =
            AlertPolicy::from_json(json!({"name": "p", "severity": "urgent", "condition": {"rules": []}})).unwrap_err();
        assert_eq!(e[0].field, "severity");
    }

    #[test]
    fn templates_render_and_show_missing_fields() {
        let e = ev();
        assert_eq!(
            render("Risk {entityId} scored {data.riskScore} ({data.tags.0})", &e),
            "Risk risk-1 scored 85 (pci)"
        );
        assert_eq!(render("user {data.user_id}", &e), "user {data.user_id:missing}");
        assert_eq!(render("{{literal}} {unclosed", &e), "{literal} {unclosed");
        assert_eq!(render("", &e), "");
    }

    #[test]
    fn set_indexes_by_type() {
        let mk = |types: Value, score: i64| {
            let p = AlertPolicy::from_json(json!({"name": "p", "severity": "low", "eventTypes": types,
                "condition": {"rules": [{"field": "data.riskScore", "operator": "gte", "value": score}]}}))
            .unwrap();
            CompiledPolicy::compile("p", p).unwrap()
        };
        let set =
            PolicySet::new(vec![mk(json!(["RISK_CREATED"]), 50), mk(json!(["CONTROL_FAILED"]), 0), mk(json!([]), 90)]);
        assert_eq!(set.matching(&ev()).count(), 1);
        let mut e = ev();
        e["data"]["riskScore"] = json!(95);
        assert_eq!(set.matching(&e).count(), 2);
    }

    #[test]
    fn group_keys() {
        let p =
            AlertPolicy::from_json(json!({"name": "p", "severity": "low", "groupBy": ["entityId", "metadata.zone"],
            "condition": {"rules": [{"field": "entityId", "operator": "exists"}]}}))
            .unwrap();
        assert_eq!(CompiledPolicy::compile("p", p).unwrap().group_key(&ev()), "risk-1|-");
    }

    proptest::proptest! {
        /// Numeric operators agree with Rust's comparisons on arbitrary finite numbers.
        #[test]
        fn numeric_operators_agree(a in -1e12f64..1e12, b in -1e12f64..1e12) {
            let e = json!({"data": {"x": a}});
            let check = |op: &str| policy(json!({"rules": [{"field": "data.x", "operator": op, "value": b}]})).matches(&e);
            proptest::prop_assert_eq!(check("gt"), a > b);
            proptest::prop_assert_eq!(check("lt"), a < b);
            proptest::prop_assert_eq!(check("gte"), a >= b);
            proptest::prop_assert_eq!(check("lte"), a <= b);
            proptest::prop_assert_eq!(check("eq"), a == b);
            proptest::prop_assert_eq!(check("ne"), a != b);
        }

        /// Case-insensitive eq and contains agree with lower-casing both sides.
        #[test]
        fn case_folding_agrees(s in "[a-zA-Z ]{0,12}", t in "[a-zA-Z ]{1,6}") {
            let e = json!({"data": {"s": s}});
            let check = |op: &str| policy(json!({"rules": [{"field": "data.s", "operator": op, "value": t, "caseSensitive": false}]})).matches(&e);
            proptest::prop_assert_eq!(check("eq"), s.to_lowercase() == t.to_lowercase());
            proptest::prop_assert_eq!(check("contains"), s.to_lowercase().contains(&t.to_lowercase()));
        }

        /// A policy set's plans (shared rules, batched thresholds, equality tables, pattern sets and `exists`
        /// passes) give exactly the verdicts of evaluating each policy on its own, for random policies over a few
        /// fields (so that many rules share a field and form batches) and random events (numbers, `-0`, text in
        /// mixed case, arrays, booleans, nulls and missing fields).
        #[test]
        fn plans_agree_with_policy_by_policy(
            policies in proptest::collection::vec(proptest::collection::vec(0u32..u32::MAX, 1..7), 1..80),
            events in proptest::collection::vec(proptest::collection::vec(0u32..u32::MAX, 8), 1..40),
        ) {
            const FIELDS: [&str; 8] = ["data.a", "data.b", "data.s", "data.list", "data.list.0", "source", "data.o.x", "data.o.y"];
            const OPS: [&str; 11] = ["eq", "ne", "gt", "lt", "gte", "lte", "in", "not_in", "contains", "regex", "exists"];
            const TEXTS: [&str; 6] = ["aws", "AWS", "Gcp", "ΟΔΟΣ", "οδοσ", "x"];
            let scalar = |r: u32| -> Value {
                match r % 4 {
                    0 => json!((r >> 4) % 7),
                    1 => json!(((r >> 4) % 9) as f64 / 2.0 - 1.0),
                    _ => json!(TEXTS[(r >> 4) as usize % TEXTS.len()]),
                }
            };
            let rule = |r: u32| -> Value {
                let (field, op) = (FIELDS[r as usize % FIELDS.len()], OPS[(r >> 3) as usize % OPS.len()]);
                let v = r >> 7;
                let value = match op {
                    "gt" | "lt" | "gte" | "lte" => json!((v % 13) as f64 / 2.0 - 2.0),
                    "in" | "not_in" => json!([scalar(v), scalar(v >> 9), if v.is_multiple_of(5) { json!(true) } else { scalar(v >> 3) }]),
                    "regex" => json!(["^a", "s$", "^(g|o)", "δ"][v as usize % 4]),
                    "exists" => Value::Null,
                    _ => if v.is_multiple_of(11) { json!(false) } else { scalar(v) },
                };
                json!({"field": field, "operator": op, "value": value, "caseSensitive": (v >> 20).is_multiple_of(2)})
            };
            let compiled: Vec<CompiledPolicy> = policies
                .iter()
                .enumerate()
                .map(|(i, rs)| {
                    let (inner, outer) = rs.split_at(rs.len() / 2);
                    let mut rules: Vec<Value> = outer.iter().map(|r| rule(*r)).collect();
                    if !inner.is_empty() {
                        rules.push(json!({"matchAll": rs[0] % 2 == 0, "rules": inner.iter().map(|r| rule(*r)).collect::<Vec<_>>()}));
                    }
                    let types: Vec<&str> = match rs[0] % 3 { 0 => vec![], 1 => vec!["RISK_CREATED"], _ => vec!["RISK_CREATED", "CLOUD_ALERT"] };
                    let doc = json!({"name": "p", "severity": "low", "eventTypes": types, "enabled": rs[0] % 13 != 0,
                        "condition": {"matchAll": rs[0] % 4 != 1, "rules": rules}});
                    CompiledPolicy::compile(&format!("p{i}"), AlertPolicy::from_json(doc).unwrap()).unwrap()
                })
                .collect();
            let set = PolicySet::new(compiled);
            for fs in &events {
                let value = |r: u32| -> Option<Value> {
                    match r % 8 {
                        0 => None,
                        1 => Some(Value::Null),
                        2 => Some(json!(r.is_multiple_of(3))),
                        3 => Some(json!(-0.0)),
                        4 => Some(json!([scalar(r >> 3), scalar(r >> 12)])),
                        5 => Some(json!({"x": scalar(r >> 3)})),
                        _ => Some(scalar(r >> 3)),
                    }
                };
                let mut data = Map::new();
                for (k, r) in ["a", "b", "s", "list"].iter().zip(fs) {
                    if let Some(v) = value(*r) {
                        data.insert(k.to_string(), v);
                    }
                }
                let mut o = Map::new();
                for (k, r) in ["x", "y"].iter().zip(&fs[4..6]) {
                    if let Some(v) = value(*r) {
                        o.insert(k.to_string(), v);
                    }
                }
                data.insert("o".into(), Value::Object(o));
                let t = ["RISK_CREATED", "CLOUD_ALERT", "USER_ACTION"][fs[6] as usize % 3];
                let mut e = json!({"eventType": t, "data": data});
                if let Some(v) = value(fs[7]) {
                    e["source"] = v;
                }
                let fast: Vec<&str> = set.matching(&e).map(|p| p.id.as_str()).collect();
                let slow: Vec<&str> = set.matching_one_by_one(&e).map(|p| p.id.as_str()).collect();
                proptest::prop_assert_eq!(fast, slow, "event {}", e);
            }
        }

        /// Rendering never panics, whatever the template.
        #[test]
        fn render_total(t in "\\PC{0,40}") {
            let _ = render(&t, &ev());
        }
    }
}

/// A condition compiled on its own: silences and inhibition rules match alert labels with it.
#[derive(Debug, Clone)]
pub struct Matcher {
    root: Compiled,
}

impl Matcher {
    pub fn new(c: &Condition, at: &str) -> Result<Self, Vec<FieldError>> {
        Ok(Self { root: CompiledPolicy::compile_node(&Node::Group(c.clone()), at, 0, &mut 0)? })
    }

    pub fn matches(&self, v: &Value) -> bool {
        eval(&self.root, v)
    }
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Mutes matching alerts between `startsAt` (default: now) and `endsAt`. Matchers see the alert's labels:
/// `policyId`, `severity`, `groupKey`, and `event` (the event that raised it), e.g. `event.data.region`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Silence {
    pub matchers: Condition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    pub ends_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Silence {
    pub fn from_json(v: Value) -> Result<Self, Vec<FieldError>> {
        let s: Silence = crate::field::deserialize(v, "")?;
        let mut errs = Vec::new();
        let end = parse_time(&s.ends_at);
        if end.is_none() {
            errs.push(FieldError::new("endsAt", "invalid_timestamp", "an RFC 3339 time"));
        }
        if let Some(st) = &s.starts_at {
            match (parse_time(st), end) {
                (None, _) => errs.push(FieldError::new("startsAt", "invalid_timestamp", "an RFC 3339 time")),
                (Some(a), Some(b)) if a >= b => {
                    errs.push(FieldError::new("endsAt", "out_of_range", "endsAt must be after startsAt"))
                }
                _ => {}
            }
        }
        if let Err(mut e) = Matcher::new(&s.matchers, "matchers") {
            errs.append(&mut e);
        }
        if errs.is_empty() {
            Ok(s)
        } else {
            Err(errs)
        }
    }

    /// Is the silence in force at `now`?
    pub fn active(&self, now: time::OffsetDateTime) -> bool {
        let started = self.starts_at.as_deref().and_then(parse_time).is_none_or(|s| s <= now);
        started && parse_time(&self.ends_at).is_some_and(|e| now < e)
    }
}

/// While an alert matching `source` is firing (active or acknowledged), new alerts matching `target` whose labels
/// named in `equal` have the same values are muted. Labels: `policyId`, `severity`, `groupKey`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InhibitRule {
    pub source: Condition,
    pub target: Condition,
    #[serde(default)]
    pub equal: Vec<String>,
}

impl InhibitRule {
    pub fn from_json(v: Value) -> Result<Self, Vec<FieldError>> {
        let r: InhibitRule = crate::field::deserialize(v, "")?;
        let mut errs = Vec::new();
        for (c, at) in [(&r.source, "source"), (&r.target, "target")] {
            if let Err(mut e) = Matcher::new(c, at) {
                errs.append(&mut e);
            }
        }
        for (i, l) in r.equal.iter().enumerate() {
            if !matches!(l.as_str(), "policyId" | "severity" | "groupKey") {
                errs.push(FieldError::new(
                    format!("equal[{i}]"),
                    "invalid_value",
                    "one of policyId, severity, groupKey",
                ));
            }
        }
        if errs.is_empty() {
            Ok(r)
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod matcher_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packs_are_valid_policies() {
        for (pack, policies) in packs() {
            for (id, doc) in policies {
                let p = AlertPolicy::from_json(doc).unwrap_or_else(|e| panic!("{pack}/{id}: {e:?}"));
                assert!(valid_id(id) && CompiledPolicy::compile(id, p).is_ok());
            }
        }
        let cpu = AlertPolicy::from_json(packs()[0].1[0].1.clone()).unwrap();
        let p = CompiledPolicy::compile("c", cpu).unwrap();
        assert!(p.matches(
            &json!({"eventType": "RESOURCE_METRIC", "data": {"metric": "CPU", "value": 97.5, "resourceId": "vm-1"}})
        ));
        assert!(!p.matches(&json!({"eventType": "RESOURCE_METRIC", "data": {"metric": "cpu", "value": 50}})));
    }

    #[test]
    fn named_time_zones_follow_daylight_saving() {
        let at = |t: &str| parse_time(t).unwrap();
        let zone = |tz: &str| {
            serde_json::from_value::<TimeWindow>(
                json!({"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00", "timeZone": tz}),
            )
            .unwrap()
        };
        let berlin = zone("Europe/Berlin");
        assert!(berlin.check().is_ok());
        let fixed: TimeWindow =
            serde_json::from_value(json!({"days": ["tue"], "start": "09:00", "end": "17:00", "utcOffset": "+01:00"}))
                .unwrap();
        // Winter (CET, +01:00): 08:30Z is 09:30 in Berlin, as at the fixed offset.
        assert!(berlin.contains(at("2026-11-24T08:30:00Z")) && fixed.contains(at("2026-11-24T08:30:00Z")));
        // Summer (CEST, +02:00): 15:30Z is 17:30 in Berlin (closed) but 16:30 at +01:00 (open).
        assert!(!berlin.contains(at("2026-07-07T15:30:00Z")));
        assert!(fixed.contains(at("2026-07-07T15:30:00Z")));
        assert!(berlin.contains(at("2026-07-07T07:30:00Z")), "09:30 CEST");
        // The weekday is the local one: Saturday 01:00Z is still Friday 20:00 in New York, Sunday 23:30Z is
        // already Monday 08:30 in Tokyo.
        let all_day = |tz: &str, day: &str| {
            serde_json::from_value::<TimeWindow>(
                json!({"days": [day], "start": "00:00", "end": "23:59", "timeZone": tz}),
            )
            .unwrap()
        };
        assert!(all_day("America/New_York", "fri").contains(at("2026-11-28T01:00:00Z")));
        assert!(!all_day("America/New_York", "sat").contains(at("2026-11-28T01:00:00Z")));
        assert!(all_day("Asia/Tokyo", "mon").contains(at("2026-11-22T23:30:00Z")));
        assert!(!all_day("Asia/Tokyo", "sun").contains(at("2026-11-22T23:30:00Z")));
        let bad = zone("Mars/Olympus_Mons");
        assert_eq!(bad.check().err().map(|e| e.0), Some("timeZone"));
        let both: TimeWindow = serde_json::from_value(
            json!({"start": "09:00", "end": "17:00", "timeZone": "Europe/Berlin", "utcOffset": "+02:00"}),
        )
        .unwrap();
        assert_eq!(both.check().err().map(|e| e.0), Some("utcOffset"));
    }

    #[test]
    fn time_windows() {
        let w = |days: Value, start: &str, end: &str, off: &str| {
            serde_json::from_value::<TimeWindow>(json!({"days": days, "start": start, "end": end, "utcOffset": off}))
                .unwrap()
        };
        let at = |t: &str| parse_time(t).unwrap();
        // 2026-11-24 is a Tuesday.
        let office = w(json!(["mon", "tue", "wed", "thu", "fri"]), "09:00", "17:00", "+01:00");
        assert!(office.contains(at("2026-11-24T08:30:00Z"))); // 09:30 local
        assert!(!office.contains(at("2026-11-24T16:30:00Z"))); // 17:30 local
        assert!(!office.contains(at("2026-11-22T10:00:00Z"))); // Sunday
        let night = w(json!(["fri"]), "22:00", "06:00", "+00:00");
        assert!(night.contains(at("2026-11-27T23:00:00Z"))); // Friday night
        assert!(night.contains(at("2026-11-28T05:00:00Z"))); // Saturday early, window started Friday
        assert!(!night.contains(at("2026-11-28T23:00:00Z")));
        let e = AlertPolicy::from_json(
            json!({"name": "x", "severity": "low", "condition": {"rules": [{"field": "a", "operator": "exists"}]},
            "activeWindows": [{"start": "25:00", "end": "10:00"}]}),
        )
        .unwrap_err();
        assert_eq!(e[0].field, "activeWindows[0].start");
    }

    #[test]
    fn silences_validate_and_apply_in_their_window() {
        let s =
            Silence::from_json(json!({"matchers": {"rules": [{"field": "policyId", "operator": "eq", "value": "p"}]},
            "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-02T00:00:00Z"}))
            .unwrap();
        let at = |t: &str| parse_time(t).unwrap();
        assert!(s.active(at("2026-01-01T12:00:00Z")));
        assert!(!s.active(at("2026-01-02T00:00:00Z")));
        assert!(!s.active(at("2025-12-31T23:59:59Z")));
        let e = Silence::from_json(json!({"matchers": {"rules": [{"field": "policyId", "operator": "exists"}]}, "startsAt": "2026-01-02T00:00:00Z", "endsAt": "2026-01-01T00:00:00Z"})).unwrap_err();
        assert_eq!(e[0].field, "endsAt");
        let e = InhibitRule::from_json(
            json!({"source": {"rules": [{"field": "severity", "operator": "eq", "value": "critical"}]},
            "target": {"rules": [{"field": "severity", "operator": "eq", "value": "low"}]}, "equal": ["region"]}),
        )
        .unwrap_err();
        assert_eq!(e[0].field, "equal[0]");
        let m = Matcher::new(
            &Condition {
                match_all: true,
                rules: vec![Node::Rule(Rule {
                    field: "event.data.region".into(),
                    operator: Operator::Eq,
                    value: json!("eu"),
                    case_sensitive: true,
                })],
            },
            "m",
        )
        .unwrap();
        assert!(m.matches(&json!({"event": {"data": {"region": "eu"}}})));
    }
}
