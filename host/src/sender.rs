//! HTTP sending: one keep-alive connection pool for every delivery, per-request timeouts, no
//! redirects followed, no proxies, response bodies read only up to the kept size, and every
//! destination through the SSRF [`guard`].

pub mod guard;

use crate::model::Invalid;
use std::time::{Duration, Instant};

use base64::Engine as _;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::Digest as _;

use crate::model::{Connection, ConnectionAuth, Method, OutboundRequest};

pub use guard::{Guard, Refused};

/// Why a request got no usable response. The texts are what an attempt records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The request would take a connection's credentials outside its base URL.
    #[error("not sent: {0}")]
    OutsideConnection(String),
    /// The connection's CA certificate does not load.
    #[error("connection ca_certificate {0}")]
    CaCertificate(String),
    /// The URL does not parse.
    #[error("invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The SSRF guard refused the destination.
    #[error("{0}")]
    Refused(Refused),
    /// No response within the timeout. `detail` starts with `: ` when there is one.
    #[error("timed out{detail}")]
    TimedOut {
        /// The error chain underneath.
        detail: String,
    },
    /// The connection could not be made.
    #[error("connection failed{detail}")]
    ConnectFailed {
        /// The error chain underneath.
        detail: String,
    },
    /// Any other failure of the request.
    #[error("request failed{detail}")]
    RequestFailed {
        /// The error chain underneath.
        detail: String,
    },
    /// The status came, and the body broke off.
    #[error("reading response body: {0}")]
    ReadingBody(Box<TransportError>),
}

impl TransportError {
    /// Whether the receiver was too slow to answer (headers or body): a sign of overload.
    pub fn is_timeout(&self) -> bool {
        match self {
            TransportError::TimedOut { .. } => true,
            TransportError::ReadingBody(inner) => inner.is_timeout(),
            _ => false,
        }
    }
}

/// What came back from one request.
#[derive(Debug, Clone)]
pub struct SendResult {
    /// Status, when a response came.
    pub status: Option<u16>,
    /// Transport error, when none came (or the body broke off).
    pub error: Option<TransportError>,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Response body, cut to the limit.
    pub body: Vec<u8>,
    /// Time to the response (or error).
    pub duration: Duration,
}

/// The HTTP client shared by all deliveries.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    body_limit: usize,
    guard: Guard,
    timeout: Duration,
    idle_per_host: usize,
    /// Clients that also trust a connection's CA certificates, by SHA-256 of the PEM text.
    with_ca: Arc<Mutex<HashMap<[u8; 32], reqwest::Client>>>,
}

impl Sender {
    /// A sender whose requests time out after `timeout` and whose response bodies are kept
    /// up to `body_limit` bytes, and which connects only where `guard` allows. It keeps up to
    /// `idle_per_host` open connections per receiver for reuse: at least as many as one
    /// endpoint may have requests in flight, or a busy endpoint reconnects for every
    /// request beyond the pool.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(
        timeout: Duration,
        body_limit: usize,
        idle_per_host: usize,
        guard: Guard,
    ) -> Result<Sender, reqwest::Error> {
        let client = client_builder(timeout, idle_per_host, &guard).build()?;
        Ok(Sender {
            client,
            body_limit,
            guard,
            timeout,
            idle_per_host,
            with_ca: Arc::default(),
        })
    }

    /// The client for a connection's CA certificates (the shared one when there are none),
    /// built on first use and kept.
    ///
    /// # Errors
    /// When the PEM text holds no certificate or one that does not parse.
    pub fn client_for(&self, ca_pem: Option<&str>) -> Result<reqwest::Client, Invalid> {
        let Some(pem) = ca_pem else {
            return Ok(self.client.clone());
        };
        let digest: [u8; 32] = sha2::Sha256::digest(pem.as_bytes()).into();
        if let Some(client) = self.with_ca.lock().unwrap().get(&digest) {
            return Ok(client.clone());
        }
        let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certificates.is_empty() {
            return Err(Invalid::from(
                "holds no `-----BEGIN CERTIFICATE-----` block",
            ));
        }
        let mut builder = client_builder(self.timeout, self.idle_per_host, &self.guard);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder
            .build()
            .map_err(|e| format!("is not a usable CA certificate: {}", describe(&e)))?;
        self.with_ca.lock().unwrap().insert(digest, client.clone());
        Ok(client)
    }

    /// The SSRF guard this sender connects through.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Sends one request's method, URL and body with `headers` (in place of the request's
    /// own: the caller composes them), then `extra` headers (set per attempt, such as the
    /// timestamp), the connection's auth (unless `headers` carry that header already) and
    /// CA certificates, and an optional per-webhook `timeout`. Never fails: transport errors
    /// are part of the result.
    pub async fn send(
        &self,
        request: &OutboundRequest,
        headers: &[(String, String)],
        extra: &[(&str, &str)],
        connection: Option<&Connection>,
        timeout: Option<Duration>,
    ) -> SendResult {
        let started = Instant::now();
        let failed = |error: TransportError| SendResult {
            status: None,
            error: Some(error),
            headers: Vec::new(),
            body: Vec::new(),
            duration: started.elapsed(),
        };
        let (client, url, auth_header) = match self.prepare(request, connection) {
            Ok(prepared) => prepared,
            Err(error) => return failed(error),
        };
        let mut builder = client.request(method_of(request.method), url);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if let Some((name, value)) = auth_header.filter(|(name, _)| !has(name)) {
            builder = builder.header(name, value);
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        match builder.body(request.body.clone()).send().await {
            Ok(response) => self.read_answer(response, started).await,
            Err(e) => failed(describe(&e)),
        }
    }

    /// What a request goes out with: the client for its connection's CA, its URL (with a
    /// query credential added), checked by the guard, and the connection's auth header.
    fn prepare(
        &self,
        request: &OutboundRequest,
        connection: Option<&Connection>,
    ) -> Result<Prepared, TransportError> {
        // A connection's credentials and CAs serve only its own base URL, whatever a stored
        // request says (it may predate a change of the base).
        if let Some(Err(refused)) = connection.map(|c| c.covers(&request.url)) {
            return Err(TransportError::OutsideConnection(refused.to_string()));
        }
        let client = self
            .client_for(connection.and_then(|c| c.ca_certificate.as_deref()))
            .map_err(|e| TransportError::CaCertificate(e.to_string()))?;
        // Parsed once: the guard checks the same `Url` reqwest sends to.
        let mut url = url::Url::parse(&request.url).map_err(|e| TransportError::InvalidUrl {
            url: request.url.clone(),
            reason: e.to_string(),
        })?;
        let auth_header = connection.and_then(|c| apply_auth(&c.auth, &mut url));
        self.guard
            .check_url(&url)
            .map_err(TransportError::Refused)?;
        Ok((client, url, auth_header))
    }

    /// The answer: its status and headers, and its body up to the limit.
    async fn read_answer(&self, mut response: reqwest::Response, started: Instant) -> SendResult {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.body_limit.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= self.body_limit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(TransportError::ReadingBody(Box::new(describe(&e))));
                    break;
                }
            }
        }
        SendResult {
            status: Some(status),
            error,
            headers,
            body,
            duration: started.elapsed(),
        }
    }
}

/// A request ready to go: its client, its URL, and the connection's auth header.
type Prepared = (reqwest::Client, url::Url, Option<(String, String)>);

fn method_of(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

/// A connection's credentials: the header they go in, or (`Query`) added to `url`.
fn apply_auth(auth: &ConnectionAuth, url: &mut url::Url) -> Option<(String, String)> {
    match auth {
        ConnectionAuth::None => None,
        ConnectionAuth::Basic { username, password } => {
            let pair = format!("{username}:{}", password.expose());
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            Some(("authorization".into(), format!("Basic {encoded}")))
        }
        ConnectionAuth::Bearer { token } => {
            Some(("authorization".into(), format!("Bearer {}", token.expose())))
        }
        ConnectionAuth::Header { name, value } => Some((name.clone(), value.expose().to_string())),
        ConnectionAuth::Query { name, value } => {
            url.query_pairs_mut().append_pair(name, value.expose());
            None
        }
    }
}

/// The settings every client shares: timeouts, no redirects, no proxies, the guard.
fn client_builder(
    timeout: Duration,
    idle_per_host: usize,
    guard: &Guard,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(guard::GuardedResolver(guard.clone())))
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle_per_host)
        .user_agent(concat!("wasmhooks/", env!("CARGO_PKG_VERSION")))
}

fn describe(err: &reqwest::Error) -> TransportError {
    // A refusal by the guard says everything; the layers around it add nothing.
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        if let Some(refused) = inner.downcast_ref::<Refused>() {
            return TransportError::Refused(refused.clone());
        }
        source = inner.source();
    }
    let mut detail = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        source = inner.source();
    }
    if err.is_timeout() {
        TransportError::TimedOut { detail }
    } else if err.is_connect() {
        TransportError::ConnectFailed { detail }
    } else {
        TransportError::RequestFailed { detail }
    }
}
