//! How long finished work is kept: [`Keep`] (`7d`, or `forever`), and a webhook's own
//! retention ([`RetentionOverrides`]) over the host's settings.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::{format_duration, parse_duration};
use super::{Invalid, Millis};

/// How long something is kept after it is done with: a duration, or for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    /// Removed this long after.
    For(Duration),
    /// Never removed.
    Forever,
}

impl Keep {
    /// Parses `7d`, `12h`, … or `forever`.
    ///
    /// # Errors
    /// A message naming the text; a zero duration is refused (nothing could be looked at).
    pub fn parse(text: &str) -> Result<Keep, Invalid> {
        if text.trim() == "forever" {
            return Ok(Keep::Forever);
        }
        let d = parse_duration(text)
            .map_err(|e| Invalid(format!("{e}, or `forever` to keep for ever")))?;
        if d.is_zero() {
            return Err(Invalid(format!(
                "`{text}` would remove records as soon as they finish; give a duration such as 1h, or `forever`"
            )));
        }
        Ok(Keep::For(d))
    }

    /// Records done with before this time are past their retention at `now`; `None` when
    /// kept for ever.
    pub fn cutoff(self, now: Millis) -> Option<Millis> {
        match self {
            Keep::For(d) => Some(Millis(
                now.as_i64()
                    .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            )),
            Keep::Forever => None,
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::For(d) => f.write_str(&format_duration(*d)),
            Keep::Forever => f.write_str("forever"),
        }
    }
}

impl Serialize for Keep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keep, D::Error> {
        Keep::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A webhook's own retention of its finished deliveries; an unset one is the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionOverrides {
    /// Delivered and skipped deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Keep>,
    /// Failed and dead deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Keep>,
}

impl RetentionOverrides {
    /// Whether neither is set.
    pub fn is_empty(&self) -> bool {
        self.delivered.is_none() && self.failed.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_reads_durations_and_forever_and_refuses_zero() {
        assert_eq!(
            Keep::parse("7d").unwrap(),
            Keep::For(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(Keep::parse("forever").unwrap(), Keep::Forever);
        assert!(Keep::parse("0s").unwrap_err().0.contains("as soon as"));
        assert!(Keep::parse("soon").unwrap_err().0.contains("forever"));
        assert!(Keep::For(Duration::from_secs(1)) < Keep::Forever);
        assert_eq!(
            Keep::For(Duration::from_secs(60)).cutoff(Millis(90_000)),
            Some(Millis(30_000))
        );
        assert_eq!(Keep::Forever.cutoff(Millis(1)), None);
        assert_eq!(Keep::parse("30d").unwrap().to_string(), "30d");
    }
}
