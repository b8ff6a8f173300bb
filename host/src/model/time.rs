//! Instants as milliseconds since the Unix epoch, shown as RFC 3339 text in JSON.

use super::Invalid;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant in UTC milliseconds. Serialises as RFC 3339 (`2026-11-23T10:00:00.123Z`);
/// deserialises from RFC 3339 text or from an integer of milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    /// The earliest instant the API accepts: the Unix epoch.
    pub const EARLIEST: Millis = Millis(0);
    /// The latest instant the API accepts, well inside what RFC 3339 text can show (the
    /// time library stops on 9999-12-30 at 22:00 UTC, leaving room for time zones):
    /// 9999-12-30T00:00:00Z. Every time the host computes (a delay, a retry, a window)
    /// saturates here.
    pub const LATEST: Millis = Millis(253_402_128_000_000);

    /// Parses RFC 3339 text.
    ///
    /// # Errors
    /// When the text is not an RFC 3339 timestamp with an offset.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        text.parse::<jiff::Timestamp>()
            .map(|t| Millis(t.as_millisecond()))
            .map_err(|e| Invalid(format!("`{text}` is not an RFC 3339 timestamp: {e}")))
    }

    /// Milliseconds since the epoch.
    pub fn as_i64(self) -> i64 {
        self.0
    }

    /// This instant plus `d`, no later than [`Millis::LATEST`].
    pub fn saturating_add(self, d: std::time::Duration) -> Millis {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Millis(self.0.saturating_add(ms).min(Self::LATEST.0))
    }

    /// Checks that an instant given to the API lies between [`Millis::EARLIEST`] and
    /// [`Millis::LATEST`], so everything computed from it can be stored and read back.
    ///
    /// # Errors
    /// A message naming the range.
    pub fn check_range(self) -> Result<Millis, Invalid> {
        if (Self::EARLIEST.0..=Self::LATEST.0).contains(&self.0) {
            Ok(self)
        } else {
            Err(Invalid::from(format!(
                "{} is outside the accepted range 1970-01-01T00:00:00Z to 9999-12-30T00:00:00Z",
                self
            )))
        }
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
                // `<n>ms` is how an instant beyond RFC 3339's years shows; records holding
                // one read back.
                if let Some(ms) = text.strip_suffix("ms").and_then(|n| n.parse().ok()) {
                    return Ok(Millis(ms));
                }
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

    #[test]
    fn every_instant_round_trips_even_beyond_rfc3339() {
        for ms in [
            i64::MIN,
            -1,
            0,
            Millis::LATEST.0,
            Millis::LATEST.0 + 1,
            i64::MAX,
        ] {
            let json = serde_json::to_string(&Millis(ms)).unwrap();
            assert_eq!(
                serde_json::from_str::<Millis>(&json).unwrap(),
                Millis(ms),
                "{json}"
            );
        }
        assert_eq!(
            serde_json::to_string(&Millis::LATEST).unwrap(),
            "\"9999-12-30T00:00:00.000Z\""
        );
    }

    #[test]
    fn arithmetic_saturates_at_the_latest_instant() {
        let far = Millis(253_402_300_800_000);
        assert!(Millis(Millis::LATEST.0 + 1).check_range().is_err());
        assert!(far.check_range().is_err());
        assert!(Millis(-1).check_range().is_err());
        assert_eq!(Millis::LATEST.check_range(), Ok(Millis::LATEST));
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(Millis::LATEST.saturating_add(day), Millis::LATEST);
        assert_eq!(Millis(i64::MAX - 5).saturating_add(day), Millis::LATEST);
        assert_eq!(Millis(0).saturating_add(day), Millis(86_400_000));
    }
}
