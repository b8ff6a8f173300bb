//! Instants as milliseconds since the Unix epoch, shown as RFC 3339 text in JSON.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant in UTC milliseconds. Serialises as RFC 3339 (`2026-11-23T10:00:00.123Z`);
/// deserialises from RFC 3339 text or from an integer of milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    /// Parses RFC 3339 text.
    ///
    /// # Errors
    /// When the text is not an RFC 3339 timestamp with an offset.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse::<jiff::Timestamp>()
            .map(|t| Millis(t.as_millisecond()))
            .map_err(|e| format!("`{text}` is not an RFC 3339 timestamp: {e}"))
    }

    /// Milliseconds since the epoch.
    pub fn as_i64(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(t) => write!(f, "{t:.3}"),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: that one buffers the value and builds an
        // error for each variant it tries, on every stored record read.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Millis;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or milliseconds since the epoch")
            }

            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<Millis, E> {
                Ok(Millis(ms))
            }

            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Millis, E> {
                i64::try_from(ms)
                    .map(Millis)
                    .map_err(|_| E::custom(format!("{ms} ms is out of range")))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Millis, E> {
                Millis::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Millis(1_614_265_330_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2021-02-25T15:02:10.123Z\"");
        assert_eq!(serde_json::from_str::<Millis>(&json).unwrap(), t);
        assert_eq!(serde_json::from_str::<Millis>("1614265330123").unwrap(), t);
        assert!(serde_json::from_str::<Millis>("\"yesterday\"").is_err());
        assert_eq!(serde_json::from_str::<Millis>("-5").unwrap(), Millis(-5));
        assert!(serde_json::from_str::<Millis>("true").is_err());
        assert!(serde_json::from_str::<Millis>("18446744073709551615").is_err());
    }
}
