//! Prefixed, time-sortable identifiers (`wh_…`, `dlv_…`, `evt_…`) and the content-hash module id.
//!
//! Generated ids are a 48-bit millisecond timestamp followed by 80 random bits, in Crockford
//! base32 (26 characters, like a ULID), so sorting ids sorts by creation time.

use super::Invalid;
use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The last value handed out, so ids made in one process are strictly increasing even
/// within one millisecond (a monotonic ULID).
static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);

/// A new 26-character time-ordered suffix.
fn ulid_suffix() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut value: u128 = (u128::from(millis & 0xffff_ffff_ffff)) << 80;
    for (i, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (72 - 8 * i);
    }
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        // Same (or an earlier) millisecond: one more than the last id.
        if value <= *last {
            value = *last + 1;
        }
        *last = value;
    }
    crockford(value)
}

/// `value` as 26 characters of Crockford base32, the most significant first.
fn crockford(value: u128) -> String {
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// The millisecond a generated suffix was made at; `None` for a suffix of another shape.
fn suffix_millis(suffix: &str) -> Option<u64> {
    if suffix.len() != 26 {
        return None;
    }
    suffix.bytes().take(10).try_fold(0u64, |at, b| {
        let digit = CROCKFORD.iter().position(|&c| c == b)?;
        Some(at << 5 | digit as u64)
    })
}

/// Why a string is not a valid id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{value}` is not a valid {kind} id (expected `{prefix}_` followed by letters and digits)")]
pub struct IdError {
    kind: &'static str,
    prefix: &'static str,
    value: String,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with (without the underscore).
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn generate() -> Self {
                $name(format!("{}_{}", $prefix, ulid_suffix()))
            }

            /// Checks that `value` looks like an id of this kind.
            ///
            /// # Errors
            /// When the prefix is wrong or the rest is empty or not alphanumeric.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                let valid = value
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| {
                        !rest.is_empty()
                            && rest.len() <= 64
                            && rest.bytes().all(|b| b.is_ascii_alphanumeric())
                    });
                if valid {
                    Ok($name(value.to_string()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: value.to_string() })
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// Identifies a webhook.
    WebhookId, "wh", "webhook"
);
prefixed_id!(
    /// Identifies one delivery: one (webhook, event) pair.
    DeliveryId, "dlv", "delivery"
);
prefixed_id!(
    /// Identifies a connection: a destination shared by webhooks.
    ConnectionId, "con", "connection"
);
prefixed_id!(
    /// Identifies an API key (the public half of the key; the secret is never stored).
    ApiKeyId, "key", "API key"
);
prefixed_id!(
    /// Identifies a plugin module: `mod_` + the first 32 hex digits of its SHA-256.
    ModuleId, "mod", "module"
);

impl DeliveryId {
    /// When a generated id was made (ms since the epoch, by the clock of the process that
    /// made it); `None` for an id of another shape.
    pub fn generated_at(&self) -> Option<u64> {
        suffix_millis(&self.0[Self::PREFIX.len() + 1..])
    }

    /// The lowest id generated at `millis`: every id generated earlier sorts before it.
    pub fn first_generated_at(millis: u64) -> String {
        let value = u128::from(millis & 0xffff_ffff_ffff) << 80;
        format!("{}_{}", Self::PREFIX, crockford(value))
    }
}

impl ModuleId {
    /// The id of a module with these bytes.
    pub fn for_bytes(bytes: &[u8]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(bytes);
        ModuleId(format!("mod_{}", &hex::encode(digest)[..32]))
    }
}

/// Identifies an event. Emitters may choose their own ids (the host dedupes on them);
/// otherwise the host generates `evt_…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// Longest id an emitter may give.
    pub const MAX_LEN: usize = 128;

    /// A new, time-ordered id.
    pub fn generate() -> Self {
        EventId(format!("evt_{}", ulid_suffix()))
    }

    /// Checks an emitter-chosen id: 1 to 128 characters of letters, digits and `_ - . :`.
    ///
    /// # Errors
    /// When the id is empty, too long, or has other characters.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(Invalid::from(format!(
                "event id must be 1 to {} characters, got {}",
                Self::MAX_LEN,
                value.len()
            )));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(Invalid::from(format!(
                "event id `{value}` has the character {bad:?}; use letters, digits and _ - . :"
            )));
        }
        Ok(EventId(value.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_sort_by_time() {
        let a = WebhookId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = WebhookId::generate();
        assert!(a.as_str().starts_with("wh_"));
        assert_eq!(a.as_str().len(), 3 + 26);
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(WebhookId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn ids_made_in_the_same_millisecond_still_increase() {
        let ids: Vec<DeliveryId> = (0..1000).map(|_| DeliveryId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_generated_delivery_id_tells_when_it_was_made() {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = now();
        let id = DeliveryId::generate();
        let at = id.generated_at().unwrap();
        assert!(
            before <= at && at <= now() + 1,
            "{at} not in [{before}, now]"
        );
        assert!(DeliveryId::first_generated_at(at).as_str() <= id.as_str());
        assert!(DeliveryId::first_generated_at(at + 1).as_str() > id.as_str());
        assert_eq!(
            DeliveryId::parse("dlv_legacy").unwrap().generated_at(),
            None
        );
    }

    #[test]
    fn parse_rejects_wrong_prefix_and_characters() {
        assert!(DeliveryId::parse("wh_abc").is_err());
        assert!(DeliveryId::parse("dlv_").is_err());
        assert!(DeliveryId::parse("dlv_a/b").is_err());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("order 1").is_err());
        assert!(EventId::parse(&"x".repeat(129)).is_err());
        assert!(EventId::parse("shop-1:order.42_a").is_ok());
    }

    #[test]
    fn module_id_is_content_hash() {
        let a = ModuleId::for_bytes(b"abc");
        assert_eq!(a, ModuleId::for_bytes(b"abc"));
        assert_ne!(a, ModuleId::for_bytes(b"abd"));
        assert_eq!(a.as_str(), "mod_ba7816bf8f01cfea414140de5dae2223");
    }
}
