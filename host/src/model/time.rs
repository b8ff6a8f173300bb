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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(ms) => Ok(Millis(ms)),
            Raw::Text(text) => Millis::parse(&text).map_err(serde::de::Error::custom),
        }
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
    }
}
