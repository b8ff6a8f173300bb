//! Field checks shared by the definitions (webhooks, connections, keys) and ingest: free
//! text, labels, tenants, headers, URLs and their destinations, and `null` where a field
//! cannot be cleared. Each refusal names the field and the rule.

use std::collections::BTreeMap;

use super::request::check_header;
use super::{Catalog, Error};

/// Refuses `null` for any of `fields` in a JSON object body.
///
/// # Errors
/// [`Error::Invalid`] naming the field.
pub fn refuse_nulls(body: &[u8], fields: &[&str]) -> Result<(), Error> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return Ok(()); // the typed parse names what is wrong
    };
    for field in fields {
        if map.get(*field).is_some_and(serde_json::Value::is_null) {
            return Err(Error::invalid(
                *field,
                "cannot be null: leave it out to keep its value, or give a value",
            ));
        }
    }
    Ok(())
}

/// Checks a map of headers and keeps it in order.
///
/// # Errors
/// [`Error::Invalid`] on `field.name` for a malformed or reserved header.
pub fn check_headers(
    field: &str,
    map: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, Error> {
    if map.len() > super::request::MAX_HEADERS {
        return Err(Error::invalid(
            field,
            format!(
                "has {} headers; the limit is {}",
                map.len(),
                super::request::MAX_HEADERS
            ),
        ));
    }
    let mut headers = Vec::with_capacity(map.len());
    for (name, value) in map {
        check_header(&name, &value).map_err(|e| Error::invalid(format!("{field}.{name}"), e))?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Checks free text (descriptions): within `max` characters, no control characters but
/// newlines and tabs.
///
/// # Errors
/// [`Error::Invalid`] on `field`.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let len = value.chars().count();
    if len > max {
        return Err(Error::invalid(
            field,
            format!("is {len} characters; the limit is {max}"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks a tenant name: 1 to 128 characters, no control characters.
///
/// # Errors
/// [`Error::Invalid`] on `field`.
pub fn check_tenant(field: &str, tenant: &str) -> Result<(), Error> {
    if tenant.is_empty() || tenant.chars().count() > 128 || tenant.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be 1 to 128 characters without control characters",
        ));
    }
    Ok(())
}

pub fn check_label(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let len = value.chars().count();
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if len > max {
        return Err(Error::invalid(
            field,
            format!("is {len} characters; the limit is {max}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

impl Catalog {
    /// Refuses a URL whose host is a restricted address that is not allow-listed (names are
    /// checked when they resolve, at send time).
    pub(super) fn check_destination(&self, field: &str, url: &str) -> Result<(), Error> {
        if let Ok(parsed) = url::Url::parse(url) {
            self.sender
                .guard()
                .check_url(&parsed)
                .map_err(|refused| Error::invalid(field, refused.to_string()))?;
        }
        Ok(())
    }
}

/// Refuses URL text with spaces or control characters (a URL parser would quietly encode or
/// drop them, so what is stored would not be what was sent).
pub(super) fn check_url_characters(url: &str) -> Result<(), Error> {
    if let Some(bad) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "url",
            format!(
                "`{}` has the character {bad:?}; percent-encode it",
                url.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Checks a destination URL: absolute http or https with a host, within the length limit.
///
/// # Errors
/// [`Error::Invalid`] on `url` saying what is wrong.
pub fn check_url(url: &str, max_len: usize) -> Result<(), Error> {
    if url.len() > max_len {
        return Err(Error::invalid(
            "url",
            format!("is {} bytes; the limit is {max_len}", url.len()),
        ));
    }
    check_url_characters(url)?;
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid("url", format!("`{url}` is not a valid URL: {e}")))?;
    // `http:///x` parses (the host becomes `x`), but is not what anyone meant.
    let authority = url.split_once("://").map_or("", |(_, rest)| rest);
    if authority.is_empty() || authority.starts_with('/') {
        return Err(Error::invalid(
            "url",
            format!("`{url}` has no host after `://`"),
        ));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "url",
            format!(
                "scheme `{}` is not allowed; use http or https",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("url", "must have a host"));
    }
    // A URL is stored with every request and shown with every delivery, and would keep its
    // credentials after a rotation or a withdrawal: they belong in a connection's `auth`.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid(
            "url",
            "carries credentials (`user:password@`); give them as a connection's `auth` \
             (basic), where they are sealed, never shown, and added only when sending",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_credentials_is_refused_without_echoing_them() {
        for url in [
            "https://user:hunter2@erp.example/api",
            "https://user@erp.example/api",
            "https://:hunter2@erp.example/api",
        ] {
            let refused = check_url(url, 2048).unwrap_err().to_string();
            assert!(refused.contains("carries credentials"), "{url}: {refused}");
            assert!(!refused.contains("hunter2"), "{refused}");
        }
        assert!(check_url("https://erp.example/api?user=x", 2048).is_ok());
    }
}
