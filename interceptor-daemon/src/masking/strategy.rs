//! How a masked value (or a detected part of one) is replaced.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, de};
use sha2::Sha256;

/// Replacement strategies, weakest first (the derived order is strength).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Keep the last `keep_last` characters: `****1111`.
    Partial,
    /// A stable pseudonym: `h:` + 16 hex digits of HMAC-SHA256 under the node key.
    Hash,
    /// A fixed marker: [`REDACTED`].
    Redact,
    /// SQL NULL.
    Null,
}

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";
const PARTIAL_PREFIX: &str = "****";
/// Hex digits of the HMAC kept in a pseudonym (64 bits: collisions are rare
/// enough for joins and counting, and the value stays short).
const HASH_HEX: usize = 16;

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Partial => "partial",
            Strategy::Hash => "hash",
            Strategy::Redact => "redact",
            Strategy::Null => "null",
        }
    }
}

impl<'de> Deserialize<'de> for Strategy {
    /// Accepts `redact`, `partial`, `hash` and `null` — also YAML's bare
    /// `null`, which parses as "no value" rather than the string.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Strategy;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one of redact, partial, hash, null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Strategy, E> {
                Ok(Strategy::Null)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Strategy, E> {
                match s {
                    "redact" => Ok(Strategy::Redact),
                    "partial" => Ok(Strategy::Partial),
                    "hash" => Ok(Strategy::Hash),
                    "null" => Ok(Strategy::Null),
                    other => Err(E::custom(format!(
                        "unknown strategy `{other}`: expected redact, partial, hash or null"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A strategy with its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Treatment {
    pub strategy: Strategy,
    pub keep_last: usize,
}

impl Treatment {
    pub fn new(strategy: Strategy, keep_last: usize) -> Self {
        Self {
            strategy,
            keep_last,
        }
    }

    /// The stronger of two: the stronger strategy; for two `partial`s, the
    /// one revealing less.
    pub fn stronger(self, other: Treatment) -> Treatment {
        match self.strategy.cmp(&other.strategy) {
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Equal => Treatment {
                strategy: self.strategy,
                keep_last: self.keep_last.min(other.keep_last),
            },
        }
    }

    /// The stronger of two that may be absent (either one if only one is).
    pub fn stronger_of(a: Option<Treatment>, b: Option<Treatment>) -> Option<Treatment> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.stronger(b)),
            (a, b) => a.or(b),
        }
    }

    /// The replacement text, or `None` for NULL.
    pub fn render(&self, value: &str, key: &MaskKey) -> Option<String> {
        match self.strategy {
            Strategy::Null => None,
            Strategy::Redact => Some(REDACTED.to_string()),
            Strategy::Hash => Some(key.pseudonym(value.as_bytes())),
            Strategy::Partial => {
                let n = value.chars().count();
                // A value no longer than what would be kept is hidden whole.
                if n <= self.keep_last {
                    return Some(REDACTED.to_string());
                }
                let tail: String = value.chars().skip(n - self.keep_last).collect();
                Some(format!("{PARTIAL_PREFIX}{tail}"))
            }
        }
    }
}

/// The per-node pseudonym key (HMAC-SHA256).
#[derive(Clone)]
pub struct MaskKey([u8; 32]);

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("MaskKey(..)")
    }
}

impl MaskKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh key from the operating system (pseudonyms then last as long as
    /// the process).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k)?;
        Ok(Self(k))
    }

    pub fn pseudonym(&self, value: &[u8]) -> String {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return REDACTED.to_string(),
        };
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        let mut s = String::with_capacity(2 + HASH_HEX);
        s.push_str("h:");
        for b in tag.iter().take(HASH_HEX / 2) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl schemars::JsonSchema for Strategy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Strategy".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "redact: `[redacted]`; partial: keep the last `keep_last` characters; hash: keyed pseudonym; null: SQL NULL (strongest)",
            "enum": ["redact", "partial", "hash", "null", null]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_render_as_documented() {
        let key = MaskKey::from_bytes([7; 32]);
        let other = MaskKey::from_bytes([8; 32]);
        let t = |s, k| Treatment::new(s, k);
        let table: &[(Treatment, &str, Option<&str>)] = &[
            (t(Strategy::Redact, 4), "ada@example.com", Some(REDACTED)),
            (t(Strategy::Null, 4), "ada@example.com", None),
            (
                t(Strategy::Partial, 4),
                "4111 1111 1111 1111",
                Some("****1111"),
            ),
            (t(Strategy::Partial, 2), "héllo", Some("****lo")),
            // Too short to keep anything back: hidden whole.
            (t(Strategy::Partial, 4), "1234", Some(REDACTED)),
            (t(Strategy::Partial, 0), "abc", Some("****")),
        ];
        for (tr, input, want) in table {
            assert_eq!(tr.render(input, &key).as_deref(), *want, "{tr:?} {input}");
        }
        let h = t(Strategy::Hash, 0);
        let a = h.render("ada@example.com", &key).unwrap();
        assert!(a.starts_with("h:") && a.len() == 18, "{a}");
        assert_eq!(Some(a.clone()), h.render("ada@example.com", &key), "stable");
        assert_ne!(Some(a.clone()), h.render("ada@example.org", &key));
        assert_ne!(Some(a), h.render("ada@example.com", &other), "keyed");
    }

    #[test]
    fn strongest_wins() {
        let p4 = Treatment::new(Strategy::Partial, 4);
        let p2 = Treatment::new(Strategy::Partial, 2);
        let h = Treatment::new(Strategy::Hash, 4);
        let r = Treatment::new(Strategy::Redact, 4);
        let n = Treatment::new(Strategy::Null, 4);
        assert_eq!(p4.stronger(p2), p2);
        assert_eq!(p2.stronger(h), h);
        assert_eq!(r.stronger(h), r);
        assert_eq!(r.stronger(n), n);
        assert_eq!(n.stronger(p4), n);
    }

    #[test]
    fn yaml_null_is_the_null_strategy() {
        let s: Strategy = serde_yaml::from_str("null").unwrap();
        assert_eq!(s, Strategy::Null);
        let s: Strategy = serde_yaml::from_str("\"null\"").unwrap();
        assert_eq!(s, Strategy::Null);
        let s: Strategy = serde_yaml::from_str("partial").unwrap();
        assert_eq!(s, Strategy::Partial);
        assert!(serde_yaml::from_str::<Strategy>("scramble").is_err());
    }
}
