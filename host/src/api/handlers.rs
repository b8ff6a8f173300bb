//! The handlers: parse, check the caller's tenant, call the pipeline, shape JSON.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{list_query, parse_json, ApiError, ApiResult, AppState, OPENAPI};
use crate::pipeline::{Error, KeyInput};
use crate::runtime::Allocator;

mod catalog;
mod deliveries;
mod events;

pub use catalog::*;
pub use deliveries::*;
pub use events::*;

type Params = Result<Query<BTreeMap<String, String>>, QueryRejection>;
type Body = Result<Bytes, BytesRejection>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// The id in a request's path: one that does not parse names nothing that exists.
fn path_id<T, E>(
    kind: &'static str,
    id: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> ApiResult<T> {
    parse(id).map_err(|_| not_found(kind, id))
}

fn webhook_id(id: &str) -> ApiResult<crate::model::WebhookId> {
    path_id("webhook", id, crate::model::WebhookId::parse)
}

fn connection_id(id: &str) -> ApiResult<crate::model::ConnectionId> {
    path_id("connection", id, crate::model::ConnectionId::parse)
}

fn module_id(id: &str) -> ApiResult<crate::model::ModuleId> {
    path_id("module", id, crate::model::ModuleId::parse)
}

fn key_id(id: &str) -> ApiResult<crate::model::ApiKeyId> {
    path_id("API key", id, crate::model::ApiKeyId::parse)
}

fn event_id(id: &str) -> ApiResult<crate::model::EventId> {
    path_id("event", id, crate::model::EventId::parse)
}

fn delivery_id(id: &str) -> ApiResult<crate::model::DeliveryId> {
    path_id("delivery", id, crate::model::DeliveryId::parse)
}

fn not_found(kind: &'static str, id: &str) -> ApiError {
    Error::NotFound {
        kind,
        id: id.to_string(),
    }
    .into()
}

// ----- public -----

/// Status for anyone; the figures behind it only for an admin key bound to no tenant. They
/// are host-wide (queue depth, free bytes, evaluation time of every tenant together), so
/// watching them would tell anyone else, a tenant's key included, how busy the others are.
pub async fn healthz(
    State(p): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, super::auth::Unauthorized> {
    let details = super::auth::is_root(&p, &headers)?;
    if let Some(reason) = p.storage().unreachable() {
        // Nothing can be accepted or delivered until the database answers again.
        let mut body = json!({ "status": "unavailable" });
        if details {
            body["storage"] = json!({ "reason": reason });
        }
        return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
    let space = p.storage().space_status();
    // Degraded: deliveries go on, new events are refused (storage.reason says why).
    let status = if space.accepting { "ok" } else { "degraded" };
    if !details {
        return Ok(Json(json!({ "status": status })).into_response());
    }
    let runtime = p.runtime();
    let allocator = match runtime.allocator() {
        Allocator::Pooling => "pooling",
        Allocator::OnDemand => "on-demand",
    };
    let mut storage = json!({
        // Not measured where a database server keeps the data.
        "free_bytes": Some(space.free).filter(|free| *free != u64::MAX),
        "floor_bytes": space.floor,
        "accepting": space.accepting,
    });
    if !space.accepting {
        storage["reason"] = json!(crate::storage::LowSpace {
            free: space.free,
            floor: space.floor,
        }
        .to_string());
    }
    Ok(Json(json!({
        "status": status,
        "queue": p.queue_depth().await,
        // Hosts sharing the storage: the endpoints' limits are shared among them.
        "hosts": p.peers().count,
        "storage": storage,
        "plugins": { "allocator": allocator, "evaluation_slots": runtime.slots() },
        // Totals only: which webhook uses what is for keys that may see it (`/v1/usage`).
        "fair_share": p.fair_share().summary(),
    }))
    .into_response())
}

/// The metrics in the OpenMetrics text format (Prometheus scrapes it).
pub async fn metrics(State(p): State<AppState>) -> Response {
    let text = p.scrape_metrics().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Writes a backup into a new directory on the server while it works on.
pub async fn backup(
    State(p): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let input: crate::pipeline::BackupInput = parse_json(&headers, &body?)?;
    Ok(Json(p.backup(input).await?).into_response())
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ----- events -----

pub async fn create_key(
    State(p): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let input: KeyInput = parse_json(&headers, &body?)?;
    let (key, text) = p.catalog().create_key(input)?;
    let mut view = key.public();
    view["key"] = json!(text);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn list_keys(State(p): State<AppState>, params: Params) -> ApiResult<Response> {
    let Query(params) = params?;
    let query = list_query(params, &["created_at", "name"], false)?;
    Ok(Json(p.catalog().list_keys(query)?.map(|k| k.public())).into_response())
}

pub async fn get_key(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.catalog().api_key(&key_id(&id)?)?.public()).into_response())
}

pub async fn revoke_key(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.catalog().revoke_key(&key_id(&id)?)?.public()).into_response())
}
