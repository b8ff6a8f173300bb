//! Response values (the "return value" of a call): a path into the receiver's JSON answer
//! whose value is kept on the delivery, and optionally emitted as a `webhook.response` event.
//!
//! A path is keys separated by dots: `entries.0.values.Request ID`. A key may hold any
//! character, spaces included; `\.` is a dot inside a key and `\\` a backslash. A key of
//! digits indexes an array (and is an ordinary key in an object).

use super::Invalid;
use serde::{Deserialize, Serialize};

/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 256;
/// Most keys in a path.
pub const MAX_SEGMENTS: usize = 32;

/// What a webhook does with its receiver's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseValue {
    /// Where the value is in the JSON response. Without one, only the plugin's response
    /// hook sets the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Emit a `webhook.response` event when a delivery ends with a value.
    #[serde(default)]
    pub emit_event: bool,
}

/// A parsed response path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponsePath {
    text: String,
    keys: Vec<String>,
}

impl ResponsePath {
    /// Parses a path.
    ///
    /// # Errors
    /// A message naming what is wrong: empty, too long, an empty key, a bad escape.
    pub fn parse(text: &str) -> Result<ResponsePath, Invalid> {
        if text.is_empty() {
            return Err(Invalid::from("must not be empty"));
        }
        if text.len() > MAX_PATH_LEN {
            return Err(Invalid::from(format!(
                "is {} bytes; the limit is {MAX_PATH_LEN}",
                text.len()
            )));
        }
        let mut segments = vec![String::new()];
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('.' | '\\')) => segments.last_mut().unwrap().push(escaped),
                    Some(other) => {
                        return Err(Invalid::from(format!(
                            "`\\{other}` is not an escape; use `\\.` for a dot in a key and `\\\\` for a backslash"
                        )))
                    }
                    None => return Err(Invalid::from("ends with a lone `\\`")),
                },
                '.' => segments.push(String::new()),
                c => segments.last_mut().unwrap().push(c),
            }
        }
        if let Some(i) = segments.iter().position(String::is_empty) {
            return Err(Invalid::from(format!(
                "key {} is empty (two dots in a row, or a dot at an end)",
                i + 1
            )));
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(Invalid::from(format!(
                "has {} keys; the limit is {MAX_SEGMENTS}",
                segments.len()
            )));
        }
        Ok(ResponsePath {
            text: text.to_string(),
            keys: segments,
        })
    }

    /// The keys, unescaped.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path: strings as they are, other values as JSON text. `None` when
    /// a key is missing or the value is `null`.
    pub fn extract(&self, document: &serde_json::Value) -> Option<String> {
        let mut at = document;
        for key in &self.keys {
            at = match at {
                serde_json::Value::Object(map) => map.get(key)?,
                serde_json::Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        match at {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_take_dots_indexes_and_keys_with_spaces() {
        let response = json!({
            "entries": [{"values": {"Request ID": "R-77", "count": 3, "ok": true}}],
            "a.b": {"c\\d": [null, {"x": 1}]},
            "7": "key of digits"
        });
        let get = |path: &str| ResponsePath::parse(path).unwrap().extract(&response);
        assert_eq!(get("entries.0.values.Request ID").as_deref(), Some("R-77"));
        assert_eq!(get("entries.0.values.count").as_deref(), Some("3"));
        assert_eq!(get("entries.0.values.ok").as_deref(), Some("true"));
        assert_eq!(
            get("entries.0.values").as_deref(),
            Some(r#"{"Request ID":"R-77","count":3,"ok":true}"#)
        );
        assert_eq!(get(r"a\.b.c\\d.1.x").as_deref(), Some("1"));
        assert_eq!(get(r"a\.b.c\\d.0"), None, "null is no value");
        assert_eq!(get("7").as_deref(), Some("key of digits"));
        assert_eq!(get("entries.1.values"), None);
        assert_eq!(get("entries.first"), None);
        assert_eq!(get("entries.0.values.Request ID.deeper"), None);
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        let err = |path: &str| ResponsePath::parse(path).unwrap_err();
        assert_eq!(err(""), "must not be empty");
        assert!(err("a..b").starts_with("key 2 is empty"));
        assert!(err(".a").starts_with("key 1 is empty"));
        assert!(err("a.").starts_with("key 2 is empty"));
        assert!(err(r"a\n").contains("is not an escape"));
        assert_eq!(err(r"a\"), "ends with a lone `\\`");
        assert!(err(&"a".repeat(300)).contains("the limit is 256"));
        assert!(err(&["k"; 33].join(".")).contains("has 33 keys"));
    }
}
