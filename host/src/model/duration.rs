//! Durations as text (`250ms`, `5s`, `5m`, `2h`, `1d`): how settings, webhook fields and the
//! REST API write them, with the serde adapters for each shape.

use super::Invalid;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `250ms`, `5s`, `5m`, `2h`, `1d` (whole numbers).
///
/// # Errors
/// A message naming the text and the accepted units.
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 250ms, 5s, 5m, 2h or 1d"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(Invalid::from(format!(
                "`{text}` has an unknown unit; use ms, s, m, h or d"
            )))
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// Formats a duration in the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Serde for a [`Duration`] as text such as `5s`.
pub mod duration_text {
    use super::*;

    #[allow(missing_docs)]
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    #[allow(missing_docs)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional [`Duration`] as text such as `5s`.
pub mod opt_duration_text {
    use super::*;

    #[allow(missing_docs)]
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    #[allow(missing_docs)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde for a list of [`Duration`]s as text such as `["5s", "5m"]`.
pub mod duration_list {
    use super::*;

    #[allow(missing_docs)]
    pub fn serialize<S: serde::Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|d| format_duration(*d)))
    }

    #[allow(missing_docs)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| parse_duration(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Serde for an optional list of [`Duration`]s as text.
pub mod opt_duration_list {
    use super::*;

    #[allow(missing_docs)]
    pub fn serialize<S: serde::Serializer>(
        list: &Option<Vec<Duration>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match list {
            Some(list) => s.collect_seq(list.iter().map(|d| format_duration(*d))),
            None => s.serialize_none(),
        }
    }

    #[allow(missing_docs)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .map(|list| {
                list.iter()
                    .map(|t| parse_duration(t).map_err(serde::de::Error::custom))
                    .collect()
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-5s").is_err());
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
