//! Identifier newtypes, validated when constructed so that a bare `String` never stands for a tenant.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must {rule}")]
pub struct IdError {
    pub what: &'static str,
    pub rule: &'static str,
}

fn charset_ok(s: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && first(b[0]) && b[1..].iter().all(|c| rest(*c))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> bool = $check;
                if check(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError { what: $what, rule: $rule })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A tenant: 1-64 characters, letters, digits, `.`, `_`, `-`, starting with a letter or digit. It appears in
    /// Kafka keys, Redis keys and URLs, so the character set is deliberately narrow.
    TenantId,
    "tenant id",
    "be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
    |s| s.len() <= 64 && charset_ok(s, |c| c.is_ascii_alphanumeric(), |c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
);

id_type!(
    /// An event id: 1-128 printable ASCII characters without spaces. evstream assigns a UUIDv7 when absent; callers
    /// may bring their own (CloudEvents ids are free-form, change-feed ids are derived).
    EventId,
    "event id",
    "be 1-128 printable ASCII characters without spaces",
    |s| s.len() <= 128 && charset_ok(s, |c| c.is_ascii_graphic(), |c| c.is_ascii_graphic())
);

id_type!(
    /// A Kafka topic name as Kafka itself allows: 1-249 of letters, digits, `.`, `_`, `-`, and not `.` or `..`.
    TopicName,
    "topic name",
    "be 1-249 characters of letters, digits, '.', '_' or '-' (and not '.' or '..')",
    |s| s.len() <= 249 && s != "." && s != ".." && charset_ok(s, |c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'), |c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
);

id_type!(
    /// An event source: upper-case letters, digits and `_`, 1-64 characters (`FRONTEND_APP`, `AWS`).
    SourceName,
    "source",
    "be 1-64 characters of upper-case letters, digits or '_', starting with a letter",
    |s| s.len() <= 64 && charset_ok(s, |c| c.is_ascii_uppercase(), |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
);

impl EventId {
    /// A fresh time-ordered id.
    pub fn generate() -> Self {
        // Written straight into its 36 bytes (`to_string` goes through the formatting machinery, a cost per
        // event on the ingest path).
        let mut text = uuid::Uuid::encode_buffer();
        Self(uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["t", "tenant-123", "Acme.eu_1", &"a".repeat(64)] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a/b", "é", &"a".repeat(65), "a\0"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topic_names() {
        assert!(TopicName::new("grc-archer-events").is_ok());
        assert!(TopicName::new("..").is_err());
        assert!(TopicName::new("a b").is_err());
        assert!(TopicName::new("x".repeat(250)).is_err());
    }

    #[test]
    fn sources() {
        assert!(SourceName::new("FRONTEND_APP").is_ok());
        assert!(SourceName::new("frontend").is_err());
        assert!(SourceName::new("1AWS").is_err());
    }

    /// A generated id is a UUIDv7 in its canonical text (lower case, hyphenated), later ones sorting after
    /// earlier ones.
    #[test]
    fn generated_event_ids() {
        let ids: Vec<EventId> = (0..100).map(|_| EventId::generate()).collect();
        for id in &ids {
            let u = uuid::Uuid::parse_str(id.as_str()).expect("a UUID");
            assert_eq!(u.get_version_num(), 7);
            assert_eq!(id.as_str(), u.to_string());
        }
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()), "time-ordered");
    }

    proptest::proptest! {
        /// Whatever a TenantId accepts survives a JSON round trip unchanged.
        #[test]
        fn tenant_round_trip(s in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}") {
            let t = TenantId::new(s.clone()).unwrap();
            let json = serde_json::to_string(&t).unwrap();
            let back: TenantId = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back.as_str(), s.as_str());
        }

        /// The validator never panics and accepts exactly the documented pattern.
        #[test]
        fn tenant_accepts_iff_pattern(s in "\\PC{0,70}") {
            let pattern_ok = !s.is_empty() && s.len() <= 64
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
            proptest::prop_assert_eq!(TenantId::new(s).is_ok(), pattern_ok);
        }
    }
}
