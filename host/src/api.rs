//! The REST API (axum). Handlers parse input, call the pipeline, and shape JSON; every error
//! goes through [`ApiError`], the one place that picks the status and the
//! `{"error":{"code","message"}}` body.
//!
//! Every route is one row of [`routes`]: method, path, who may call it, handler. The router is
//! built from that table, and a test checks the table against `docs/openapi.json`, so the
//! document cannot drift from what is served.

mod auth;
mod handlers;
pub mod listener;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

pub use auth::Access;

use crate::config::ApiConfig;
use crate::pipeline::{Error, ListQuery, Pipeline};
use crate::runtime::ValidationError;

type AppState = Arc<Pipeline>;

/// An API failure: status, machine-readable code and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (a refusal that passes with time).
    retry_after: Option<u32>,
}

/// What `Retry-After` says when storage refuses or fails.
const STORAGE_RETRY_AFTER: u32 = 30;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let (status, code) = match &err {
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "validation_error"),
            Error::Json(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Busy(_) => {
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message).retry_after(1)
            }
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Module(ValidationError::NotWasm | ValidationError::CoreModule) => {
                (StatusCode::BAD_REQUEST, "invalid_module")
            }
            Error::Module(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_module"),
            Error::LowSpace(_) => {
                return ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    message,
                )
                .retry_after(STORAGE_RETRY_AFTER)
            }
            Error::Store(crate::storage::StorageError::Conflict(_)) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Error::Store(e) if e.is_out_of_space() => {
                tracing::error!("storage full: {e}");
                return ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "the data directory's filesystem is full: nothing of this request was \
                     stored; retry once space is freed",
                )
                .retry_after(STORAGE_RETRY_AFTER);
            }
            Error::Store(e) if e.is_unavailable() => {
                tracing::error!("storage failed: {e}");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the store could not read or write (the host's log says why): nothing of \
                     this request was stored; retry later",
                )
                .retry_after(STORAGE_RETRY_AFTER);
            }
            Error::Store(e) => {
                tracing::error!("storage error: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "storage_error")
            }
        };
        ApiError::new(status, code, message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if rejection
            .body_text()
            .contains(listener::BODY_TIMEOUT_MESSAGE)
        {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                listener::BODY_TIMEOUT_MESSAGE,
            );
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                status,
                "too_large",
                "the request body is over the size limit \
                 (api.max_body_bytes; api.max_module_bytes for module uploads)",
            );
        }
        ApiError::new(status, "bad_request", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// One route: method, path (axum syntax, as in the OpenAPI document), who may call it, and
/// its handler.
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template such as `/v1/webhooks/{id}`.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(method: &'static str, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        other => panic!("route table: unsupported method {other}"),
    };
    Route {
        method,
        path,
        access,
        handler: on(filter, handler),
    }
}

/// Every route of the API.
pub fn routes(api: &ApiConfig) -> Vec<Route> {
    use handlers as h;
    use Access::{Admin, Emitter, Metrics, Public, Root};
    let mut upload = route("POST", "/v1/modules", Root, h::upload_module);
    upload.handler = upload
        .handler
        .layer(DefaultBodyLimit::max(api.max_module_bytes));
    vec![
        route("GET", "/healthz", Public, h::healthz),
        route("GET", "/openapi.json", Public, h::openapi),
        route("GET", "/metrics", Metrics, h::metrics),
        route("POST", "/v1/events", Emitter, h::emit_events),
        route("GET", "/v1/events", Emitter, h::list_events),
        route("GET", "/v1/events/{id}", Emitter, h::get_event),
        upload,
        route("GET", "/v1/modules", Admin, h::list_modules),
        route("GET", "/v1/modules/{id}", Admin, h::get_module),
        route("DELETE", "/v1/modules/{id}", Root, h::delete_module),
        route("POST", "/v1/connections", Root, h::create_connection),
        route("GET", "/v1/connections", Admin, h::list_connections),
        route("GET", "/v1/connections/{id}", Admin, h::get_connection),
        route("PATCH", "/v1/connections/{id}", Root, h::update_connection),
        route("DELETE", "/v1/connections/{id}", Root, h::delete_connection),
        route("POST", "/v1/webhooks", Admin, h::create_webhook),
        route("GET", "/v1/webhooks", Admin, h::list_webhooks),
        route("GET", "/v1/webhooks/{id}", Admin, h::get_webhook),
        route("PATCH", "/v1/webhooks/{id}", Admin, h::update_webhook),
        route("DELETE", "/v1/webhooks/{id}", Admin, h::delete_webhook),
        route("POST", "/v1/webhooks/{id}/enable", Admin, h::enable_webhook),
        route(
            "POST",
            "/v1/webhooks/{id}/disable",
            Admin,
            h::disable_webhook,
        ),
        route("POST", "/v1/webhooks/{id}/test", Admin, h::test_webhook),
        route(
            "POST",
            "/v1/webhooks/{id}/recover",
            Admin,
            h::recover_webhook,
        ),
        route(
            "POST",
            "/v1/webhooks/{id}/rotate-secret",
            Admin,
            h::rotate_webhook_secret,
        ),
        route("GET", "/v1/usage", Admin, h::list_usage),
        route("GET", "/v1/deliveries", Admin, h::list_deliveries),
        route("GET", "/v1/deliveries/{id}", Admin, h::get_delivery),
        route(
            "POST",
            "/v1/deliveries/{id}/replay",
            Admin,
            h::replay_delivery,
        ),
        route("POST", "/v1/backup", Root, h::backup),
        route("POST", "/v1/keys", Root, h::create_key),
        route("GET", "/v1/keys", Root, h::list_keys),
        route("GET", "/v1/keys/{id}", Root, h::get_key),
        route("DELETE", "/v1/keys/{id}", Root, h::revoke_key),
    ]
}

/// The API's routes over `pipeline`.
pub fn router(pipeline: Arc<Pipeline>) -> Router {
    let api = pipeline.config().api.clone();
    let mut router = Router::new();
    for r in routes(&api) {
        let guard =
            axum::middleware::from_fn_with_state((pipeline.clone(), r.access), auth::require);
        router = router.route(r.path, r.handler.route_layer(guard));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(api.max_body_bytes))
        .with_state(pipeline)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Parses a JSON body, insisting on a JSON content type.
fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> ApiResult<T> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected content type application/json, got `{content_type}`"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Error::Json(e.to_string()).into())
}

/// A list query from query parameters.
fn list_query(
    params: BTreeMap<String, String>,
    orders: &[&str],
    default_descending: bool,
) -> ApiResult<ListQuery> {
    Ok(ListQuery::parse(params, orders, default_descending)?)
}

/// The `expand` parameter: a comma-separated subset of `allowed`.
fn expand(params: &BTreeMap<String, String>, allowed: &[&str]) -> ApiResult<Vec<String>> {
    for key in params.keys() {
        if key != "expand" {
            return Err(Error::invalid(
                key.clone(),
                "is not a parameter of this endpoint; it takes expand",
            )
            .into());
        }
    }
    let Some(list) = params.get("expand") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if !allowed.contains(&item) {
            return Err(Error::invalid(
                "expand",
                format!("cannot expand `{item}`; use {}", allowed.join(", ")),
            )
            .into());
        }
        out.push(item.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The OpenAPI document lists exactly the routes the router serves.
    #[test]
    fn openapi_document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                    documented.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        let served: BTreeSet<String> = routes(&ApiConfig::default())
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "routes missing from docs/openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "docs/openapi.json lists routes that do not exist: {extra:?}"
        );
    }

    /// Every documented operation says who may call it, and says it truly.
    #[test]
    fn openapi_security_matches_route_access() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        for r in routes(&ApiConfig::default()) {
            let op = &doc["paths"][r.path][r.method.to_lowercase()];
            let role = op["x-wasmhooks-access"]
                .as_str()
                .unwrap_or_else(|| panic!("{} {} has no x-wasmhooks-access", r.method, r.path));
            let expected = match r.access {
                Access::Public => "public",
                Access::Emitter => "emitter",
                Access::Admin => "admin",
                Access::Root => "root",
                Access::Metrics => "metrics",
            };
            assert_eq!(role, expected, "{} {}", r.method, r.path);
        }
    }
}
