//! A client of the REST API, for the programs that call a running host: the CLI, the demo,
//! the end-to-end tests, and applications that emit events. Errors carry the server's own
//! code and message.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{Delivery, ModuleInfo, Webhook};

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API key cannot be sent as a header.
    #[error("the API key has characters that cannot be sent in a header")]
    Key,
    /// No answer: the server could not be reached, or the connection broke.
    #[error("calling {url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// The server refused the call, saying why.
    #[error("{message} ({status} {code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code (`validation_error`, `not_found`, …).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server answered something other than the API's JSON.
    #[error("the server answered {status}: {body}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// The body as text.
        body: String,
    },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The server's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A request body.
pub enum Body {
    /// JSON.
    Json(Value),
    /// A plugin component (`application/wasm`).
    Wasm(Vec<u8>),
}

/// What the server answered, whatever the status.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body: JSON, or the text as a JSON string when it is not JSON.
    pub body: Value,
}

impl Answer {
    /// The body when the status is a success; otherwise the server's error.
    ///
    /// # Errors
    /// [`ClientError::Api`] for the API's error answers, [`ClientError::Unexpected`] for
    /// anything else that is not a success.
    pub fn into_result(self) -> Result<Value, ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let error = &self.body["error"];
        match (error["code"].as_str(), error["message"].as_str()) {
            (Some(code), Some(message)) => Err(ClientError::Api {
                status: self.status,
                code: code.to_string(),
                message: message.to_string(),
            }),
            _ => Err(ClientError::Unexpected {
                status: self.status,
                body: match self.body {
                    Value::String(text) => text,
                    other => other.to_string(),
                },
            }),
        }
    }
}

/// A client of one server, with one API key.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`), sending `key` if given.
    ///
    /// # Errors
    /// [`ClientError::Key`] when the key cannot be sent as a header.
    pub fn new(base: &str, key: Option<&str>) -> Result<Client, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| ClientError::Key)?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|source| ClientError::Transport {
                url: base.to_string(),
                source,
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Calls `method path?query` with `body` and returns the answer, whatever its status.
    ///
    /// # Errors
    /// [`ClientError::Transport`] when no answer came.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Body>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut request = self.http.request(method, &url).query(query);
        request = match body {
            None => request,
            Some(Body::Json(value)) => request.json(&value),
            Some(Body::Wasm(bytes)) => request
                .header("content-type", "application/wasm")
                .body(bytes),
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(transport)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// `GET path`; the body on success.
    ///
    /// # Errors
    /// The server's error, or no answer.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, &[], None)
            .await?
            .into_result()
    }

    /// `POST path` with a JSON body; the answer's body on success.
    ///
    /// # Errors
    /// The server's error, or no answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(
            reqwest::Method::POST,
            path,
            &[],
            Some(Body::Json(body.clone())),
        )
        .await?
        .into_result()
    }

    /// Emits one event object, or an array of them; the acknowledgement (202: durable).
    ///
    /// # Errors
    /// The server's error (a refused event changes nothing), or no answer.
    pub async fn emit(&self, events: &Value) -> Result<Value, ClientError> {
        self.post("/v1/events", events).await
    }

    /// Uploads a plugin component under `name` (and `version`).
    ///
    /// # Errors
    /// The server's error (`invalid_module` for bytes that are not a plugin), or no answer.
    pub async fn upload_module(
        &self,
        name: &str,
        version: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<ModuleInfo, ClientError> {
        let mut query = vec![("name".to_string(), name.to_string())];
        if let Some(version) = version {
            query.push(("version".into(), version.into()));
        }
        let body = self
            .call(
                reqwest::Method::POST,
                "/v1/modules",
                &query,
                Some(Body::Wasm(bytes)),
            )
            .await?
            .into_result()?;
        typed("module", body)
    }

    /// Creates a webhook from its definition.
    ///
    /// # Errors
    /// The server's error (naming the field that is wrong), or no answer.
    pub async fn create_webhook(&self, definition: &Value) -> Result<Webhook, ClientError> {
        typed("webhook", self.post("/v1/webhooks", definition).await?)
    }

    /// One delivery, with its requests, attempts and logs.
    ///
    /// # Errors
    /// The server's error (`not_found`), or no answer.
    pub async fn delivery(&self, id: &str) -> Result<Delivery, ClientError> {
        typed("delivery", self.get(&format!("/v1/deliveries/{id}")).await?)
    }
}

/// A body read as the type the API documents for it.
fn typed<T: DeserializeOwned>(what: &str, body: Value) -> Result<T, ClientError> {
    serde_json::from_value(body.clone()).map_err(|e| ClientError::Unexpected {
        status: 200,
        body: format!("not a {what} ({e}): {body}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_the_body_on_success_and_the_servers_error_otherwise() {
        let ok = Answer {
            status: 202,
            body: serde_json::json!({ "id": "e-1" }),
        };
        assert_eq!(ok.into_result().unwrap()["id"], "e-1");
        let refused = Answer {
            status: 422,
            body: serde_json::json!({ "error": { "code": "validation_error",
                                                 "message": "kind: event kind `bad kind` is invalid" } }),
        };
        let error = refused.into_result().unwrap_err();
        assert_eq!(
            (error.status(), error.code()),
            (Some(422), Some("validation_error"))
        );
        assert_eq!(
            error.to_string(),
            "kind: event kind `bad kind` is invalid (422 validation_error)"
        );
        let proxy = Answer {
            status: 502,
            body: Value::String("Bad Gateway".into()),
        };
        let error = proxy.into_result().unwrap_err();
        assert_eq!(error.to_string(), "the server answered 502: Bad Gateway");
        assert_eq!(error.code(), None);
    }
}
