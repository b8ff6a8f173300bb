//! Typed helpers over the raw bindings: errors, payloads, request builders, config and state.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys as host;
use crate::{Decision, Event, Method, Request};

/// A plugin error: recorded on the delivery as the reason nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error(format!("json: {err}"))
    }
}

/// Result with the plugin [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Event {
    /// The payload parsed into a serde type.
    ///
    /// # Errors
    /// When the payload does not match `T`; the message names the event and the serde error.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload)
            .map_err(|e| Error(format!("event {} payload: {e}", self.id)))
    }

    /// The payload as a JSON value.
    ///
    /// # Errors
    /// When the payload is not JSON (the host only accepts JSON, so this is rare).
    pub fn payload_json(&self) -> Result<serde_json::Value> {
        self.payload_as()
    }

    /// The value of a routing attribute, if the emitter set it.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl Request {
    /// A request with no body that takes everything from the webhook definition.
    pub fn empty() -> Self {
        Request {
            method: None,
            path: None,
            headers: Vec::new(),
            body: None,
            content_type: None,
        }
    }

    /// A request whose body is `value` as JSON (`application/json`).
    ///
    /// # Errors
    /// When `value` cannot be serialised.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self::bytes(serde_json::to_vec(value)?, "application/json"))
    }

    /// A request whose body is this text (`text/plain; charset=utf-8`).
    pub fn text(body: impl Into<String>) -> Self {
        Self::bytes(body.into().into_bytes(), "text/plain; charset=utf-8")
    }

    /// A request whose body is these bytes with this content type.
    pub fn bytes(body: impl Into<Vec<u8>>, content_type: impl Into<String>) -> Self {
        Request {
            body: Some(body.into()),
            content_type: Some(content_type.into()),
            ..Self::empty()
        }
    }

    /// Use this method instead of the webhook's.
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Use this path and query (see the WIT `request.path` for how it joins the webhook URL).
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Add a header (applied after the webhook's own headers).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The body as text, when there is one and it is UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        self.body
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When there is no body or it is not JSON.
    pub fn body_json(&self) -> Result<serde_json::Value> {
        let body = self.body.as_deref().ok_or("the request has no body")?;
        Ok(serde_json::from_slice(body)?)
    }

    /// The value of a header the plugin set (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Method {
    /// A method by name, in any case (`"post"`, `"PUT"`), as configs give them.
    ///
    /// # Errors
    /// A name that is not GET, POST, PUT, PATCH or DELETE.
    pub fn parse(name: &str) -> Result<Method> {
        Ok(match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            other => {
                return Err(Error(format!(
                    "method `{other}` is not GET, POST, PUT, PATCH or DELETE"
                )))
            }
        })
    }
}

impl Decision {
    /// Do not send; the reason is recorded on the delivery.
    pub fn skip(reason: impl Into<String>) -> Self {
        Decision::Skip(reason.into())
    }

    /// Send this one request.
    pub fn send(request: Request) -> Self {
        Decision::Send(vec![request])
    }

    /// The requests to send (none for a skip).
    pub fn requests(&self) -> &[Request] {
        match self {
            Decision::Send(requests) => requests,
            Decision::Skip(_) => &[],
        }
    }

    /// The reason of a skip.
    pub fn skip_reason(&self) -> Option<&str> {
        match self {
            Decision::Skip(reason) => Some(reason),
            Decision::Send(_) => None,
        }
    }
}

impl crate::Response {
    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON.
    pub fn body_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// The webhook's configuration parsed into a serde type (`{}` when the operator set none).
///
/// # Errors
/// When the configuration does not match `T`; the message says so.
pub fn config<T: DeserializeOwned>() -> Result<T> {
    serde_json::from_str(&host::config()).map_err(|e| Error(format!("webhook config: {e}")))
}

/// The webhook's configuration as JSON text (`{}` when the operator set none), for plugins
/// that parse it themselves.
pub fn config_text() -> String {
    host::config()
}

/// The webhook's configuration as a JSON value.
///
/// # Errors
/// Never in practice: the host only stores JSON objects.
pub fn config_json() -> Result<serde_json::Value> {
    config()
}

/// Small persistent state scoped to the webhook, kept by the host between events.
///
/// Use it to fire on edges ("stock went from above zero to zero") rather than levels.
pub mod state {
    use super::{host, DeserializeOwned, Error, Result, Serialize};

    /// The bytes stored under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::state_get(key)
    }

    /// Store bytes under `key`.
    ///
    /// # Errors
    /// When the host's state limit for this webhook would be exceeded.
    pub fn set(key: &str, value: &[u8]) -> Result<()> {
        host::state_set(key, value).map_err(Error::from)
    }

    /// Remove `key`.
    pub fn remove(key: &str) {
        host::state_remove(key)
    }

    /// The JSON value stored under `key`, parsed into `T`.
    ///
    /// # Errors
    /// When the stored bytes are not a `T`.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>> {
        match get(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::new(format!("state {key}: {e}"))),
        }
    }

    /// Store `value` as JSON under `key`.
    ///
    /// # Errors
    /// When serialising fails or the state limit would be exceeded.
    pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<()> {
        set(key, &serde_json::to_vec(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_in_any_case_and_bad_ones_are_named() {
        assert_eq!(Method::parse("post"), Ok(Method::Post));
        assert_eq!(Method::parse("Delete"), Ok(Method::Delete));
        assert_eq!(
            Method::parse("fetch").unwrap_err().to_string(),
            "method `FETCH` is not GET, POST, PUT, PATCH or DELETE"
        );
    }
}
