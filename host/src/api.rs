//! The REST API (axum). Handlers parse input, call the pipeline, and shape JSON; every error
//! goes through [`ApiError`], the one place that picks the status and the
//! `{"error":{"code","message"}}` body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::model::{DeliveryId, DeliveryStatus, EventId, WebhookId};
use crate::pipeline::{DeliveryFilter, Error, EventInput, Pipeline, WebhookInput};
use crate::runtime::ValidationError;

type AppState = Arc<Pipeline>;

/// An API failure: status, machine-readable code and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Module(ValidationError::NotWasm | ValidationError::CoreModule) => {
                (StatusCode::BAD_REQUEST, "invalid_module")
            }
            Error::Module(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_module"),
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
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, rejection.body_text())
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
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's routes over `pipeline`.
pub fn router(pipeline: Arc<Pipeline>) -> Router {
    let api = &pipeline.config().api;
    let body_limit = api.max_body_bytes;
    let module_limit = api.max_module_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/modules",
            get(list_modules)
                .post(upload_module)
                .layer(DefaultBodyLimit::max(module_limit)),
        )
        .route("/v1/modules/{id}", get(get_module).delete(delete_module))
        .route("/v1/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/v1/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route("/v1/webhooks/{id}/enable", post(enable_webhook))
        .route("/v1/webhooks/{id}/disable", post(disable_webhook))
        .route("/v1/webhooks/{id}/test", post(test_webhook))
        .route("/v1/events", post(emit_events))
        .route("/v1/events/{id}", get(get_event))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/replay", post(replay_delivery))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
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

async fn healthz(State(p): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "queue": p.store().queue_len() }))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    name: Option<String>,
    version: Option<String>,
}

async fn upload_module(
    State(p): State<AppState>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let body = body?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(
        content_type,
        "application/wasm" | "application/octet-stream"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("upload the component as application/wasm, got `{content_type}`"),
        ));
    }
    let name = query
        .name
        .ok_or_else(|| Error::invalid("name", "the query parameter `name` is required"))?;
    let version = query.version.unwrap_or_else(|| "0.0.0".to_string());
    let pipeline = p.clone();
    let (info, created) =
        tokio::task::spawn_blocking(move || pipeline.upload_module(&name, &version, &body))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

async fn delete_module(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.delete_module(&id)?).into_response())
}

async fn list_modules(State(p): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({ "data": p.modules()? })))
}

async fn get_module(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.module(&id)?).into_response())
}

async fn create_webhook(
    State(p): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let input: WebhookInput = parse_json(&headers, &body?)?;
    let webhook = p.create_webhook(input)?;
    Ok((StatusCode::CREATED, Json(webhook)).into_response())
}

async fn update_webhook(
    State(p): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let input: WebhookInput = parse_json(&headers, &body?)?;
    Ok(Json(p.update_webhook(&id, input)?).into_response())
}

async fn delete_webhook(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.delete_webhook(&id)?).into_response())
}

async fn enable_webhook(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    set_enabled(&p, &id, true)
}

async fn disable_webhook(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    set_enabled(&p, &id, false)
}

fn set_enabled(p: &Pipeline, id: &str, enabled: bool) -> ApiResult<Response> {
    let input = WebhookInput {
        enabled: Some(enabled),
        ..WebhookInput::default()
    };
    Ok(Json(p.update_webhook(id, input)?).into_response())
}

async fn test_webhook(
    State(p): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let input: EventInput = parse_json(&headers, &body?)?;
    let pipeline = p.clone();
    let run = tokio::task::spawn_blocking(move || pipeline.dry_run(&id, input))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(run).into_response())
}

async fn list_webhooks(State(p): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "data": p.webhooks() }))
}

async fn get_webhook(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.webhook(&id)?).into_response())
}

async fn emit_events(
    State(p): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    // Parsed through raw values so every payload keeps the exact bytes the emitter sent.
    let body: Box<RawValue> = parse_json(&headers, &body?)?;
    let batch = body.get().starts_with('[');
    let values: Vec<Box<RawValue>> = if batch {
        serde_json::from_str(body.get()).map_err(|e| Error::Json(e.to_string()))?
    } else {
        vec![body]
    };
    let mut inputs = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let input: EventInput = serde_json::from_str(value.get()).map_err(|e| {
            let at = if batch {
                format!("events[{i}]: ")
            } else {
                String::new()
            };
            Error::Json(format!("{at}{e}"))
        })?;
        inputs.push(input);
    }
    let results = p.emit(inputs).await?;
    let body = if batch {
        json!({ "data": results })
    } else {
        json!(results[0])
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn get_event(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.event(&id)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    webhook_id: Option<String>,
    event_id: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// Largest page a list returns.
const MAX_PAGE: usize = 250;

async fn list_deliveries(
    State(p): State<AppState>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::invalid("limit", format!("must be 1 to {MAX_PAGE}")).into());
    }
    let filter = DeliveryFilter {
        webhook_id: q
            .webhook_id
            .map(|w| WebhookId::parse(&w).map_err(|e| Error::invalid("webhook_id", e.to_string())))
            .transpose()?,
        event_id: q
            .event_id
            .map(|e| EventId::parse(&e).map_err(|m| Error::invalid("event_id", m)))
            .transpose()?,
        status: q
            .status
            .map(|s| DeliveryStatus::parse(&s).map_err(|m| Error::invalid("status", m)))
            .transpose()?,
        before: q
            .before
            .map(|b| DeliveryId::parse(&b).map_err(|e| Error::invalid("before", e.to_string())))
            .transpose()?,
        limit,
    };
    let page = p.deliveries(&filter)?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(json!({ "data": page, "next_cursor": next })))
}

async fn replay_delivery(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let replay = p.replay(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(replay)).into_response())
}

async fn get_delivery(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.delivery(&id)?).into_response())
}
