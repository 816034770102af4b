//! The change-feed configuration file (`EVSTREAM_CHANGE_FEED_CONFIG`, JSON): the account, how to start, tuning, and
//! the container mappings. Secrets (the account key, an Entra ID client secret) never live in the file: they come
//! from the environment variables the file names (or the defaults below).

use crate::mapping::ContainerMapping;
use serde::Deserialize;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeFeedFile {
    /// `https://ACCOUNT.documents.azure.com:443/`; `http://` only for an emulator on loopback.
    pub endpoint: String,
    #[serde(default)]
    pub auth: Auth,
    /// Where a range with no checkpoint starts.
    #[serde(default)]
    pub start_from: StartFrom,
    #[serde(default)]
    pub mode: FeedMode,
    /// Wait between polls of a range that had no changes.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Most documents per page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// A reader that stops renewing its leases loses them after this long; another reader takes its ranges over.
    #[serde(default = "default_lease_ms")]
    pub lease_ttl_ms: u64,
    /// First and longest wait after an error (doubling, with jitter); a 429's retry-after wins when longer.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Prefix of the lease and checkpoint keys in Redis; two deployments on one Redis need two prefixes.
    #[serde(default = "default_prefix")]
    pub lease_prefix: String,
    pub containers: Vec<ContainerMapping>,
}

fn default_poll_ms() -> u64 {
    1000
}
fn default_page_size() -> u32 {
    100
}
fn default_lease_ms() -> u64 {
    15_000
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_prefix() -> String {
    "evstream:changefeed".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum Auth {
    /// The account's primary or secondary key, from the environment variable `keyEnv`.
    Key {
        #[serde(default = "default_key_env")]
        key_env: String,
    },
    /// Entra ID (service principal, client-credentials flow); the secret from `clientSecretEnv`.
    EntraId {
        tenant_id: String,
        client_id: String,
        #[serde(default = "default_secret_env")]
        client_secret_env: String,
        /// Token endpoint authority; the public cloud by default.
        #[serde(default = "default_authority")]
        authority: String,
    },
}

impl Default for Auth {
    fn default() -> Self {
        Self::Key { key_env: default_key_env() }
    }
}

fn default_key_env() -> String {
    "EVSTREAM_COSMOS_KEY".to_owned()
}
fn default_secret_env() -> String {
    "EVSTREAM_COSMOS_CLIENT_SECRET".to_owned()
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    #[default]
    Beginning,
    Now,
    /// RFC 3339.
    PointInTime(#[serde(with = "time::serde::rfc3339")] OffsetDateTime),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FeedMode {
    /// The latest version of each changed document (every account).
    #[default]
    LatestVersion,
    /// Every version and deletes (accounts with continuous backup); cannot start from the beginning.
    AllVersionsAndDeletes,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("change-feed config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("change-feed config: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("change-feed config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ChangeFeedFile {
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let f: Self = serde_json::from_str(text)?;
        f.validate()?;
        Ok(f)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: &str| Err(ConfigError::Invalid { field: field.into(), reason: reason.into() });
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            return bad("endpoint", "must be an http(s) URL");
        }
        if self.containers.is_empty() {
            return bad("containers", "at least one container mapping is needed");
        }
        if self.page_size == 0 || self.page_size > 10_000 {
            return bad("pageSize", "must be 1..=10000");
        }
        if self.lease_ttl_ms < 1000 {
            return bad("leaseTtlMs", "must be at least 1000");
        }
        if self.mode == FeedMode::AllVersionsAndDeletes && self.start_from == StartFrom::Beginning {
            return bad("startFrom", "allVersionsAndDeletes cannot start from the beginning; use now or pointInTime");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            if c.database.is_empty() || c.container.is_empty() {
                return bad(&format!("containers[{i}]"), "database and container are required");
            }
            if !seen.insert((c.database.as_str(), c.container.as_str())) {
                return bad(&format!("containers[{i}]"), "the same container is mapped twice");
            }
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
    pub fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.backoff_ms.max(1)), Duration::from_millis(self.max_backoff_ms.max(self.backoff_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"endpoint":"http://127.0.0.1:8081/","containers":[{"database":"grc","container":"risks",
        "entityType":"risk","created":"RISK_CREATED"}]}"#;

    #[test]
    fn defaults_apply() {
        let f = ChangeFeedFile::parse(OK).expect("valid");
        assert_eq!(f.auth, Auth::Key { key_env: "EVSTREAM_COSMOS_KEY".into() });
        assert_eq!(f.start_from, StartFrom::Beginning);
        assert_eq!(f.page_size, 100);
        assert_eq!(f.lease_ttl(), Duration::from_secs(15));
    }

    #[test]
    fn start_positions_parse() {
        let now = OK.replacen('{', r#"{"startFrom":"now","#, 1);
        assert_eq!(ChangeFeedFile::parse(&now).expect("now").start_from, StartFrom::Now);
        let pit = OK.replacen('{', r#"{"startFrom":{"pointInTime":"2026-01-02T03:04:05Z"},"#, 1);
        assert!(matches!(ChangeFeedFile::parse(&pit).expect("pit").start_from, StartFrom::PointInTime(_)));
    }

    #[test]
    fn invalid_files_name_the_field() {
        let cases = [
            (OK.replace("http://127.0.0.1:8081/", "ftp://x"), "endpoint"),
            (OK.replacen('{', r#"{"pageSize":0,"#, 1), "pageSize"),
            (OK.replacen('{', r#"{"leaseTtlMs":10,"#, 1), "leaseTtlMs"),
            (OK.replacen('{', r#"{"mode":"allVersionsAndDeletes","#, 1), "startFrom"),
            (r#"{"endpoint":"http://x/","containers":[]}"#.to_string(), "containers"),
        ];
        for (text, field) in cases {
            match ChangeFeedFile::parse(&text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
        }
        assert!(matches!(
            ChangeFeedFile::parse(r#"{"endpoint":"http://x/","containers":[],"nope":1}"#),
            Err(ConfigError::Parse(_))
        ));
    }
}
