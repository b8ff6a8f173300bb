//! The handlers: parse, check the caller's tenant, call the pipeline, shape JSON.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{expand, list_query, parse_json, ApiError, ApiResult, AppState, OPENAPI};
use crate::model::{Connection, Delivery, Webhook};
use crate::pipeline::{
    ConnectionInput, Error, EventInput, KeyInput, Principal, RecoverInput, RotateInput,
    WebhookInput,
};
use crate::runtime::Allocator;

type Params = Result<Query<BTreeMap<String, String>>, QueryRejection>;
type Body = Result<Bytes, BytesRejection>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn not_found(kind: &'static str, id: &str) -> ApiError {
    Error::NotFound {
        kind,
        id: id.to_string(),
    }
    .into()
}

// ----- public -----

pub async fn healthz(State(p): State<AppState>) -> Json<Value> {
    let runtime = p.runtime();
    let allocator = match runtime.allocator() {
        Allocator::Pooling => "pooling",
        Allocator::OnDemand => "on-demand",
    };
    let space = p.storage().space_status();
    let mut storage = json!({
        "free_bytes": space.free,
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
    Json(json!({
        // Degraded: deliveries go on, new events are refused (storage.reason says why).
        "status": if space.accepting { "ok" } else { "degraded" },
        "queue": p.storage().queue_len(),
        "storage": storage,
        "plugins": { "allocator": allocator, "evaluation_slots": runtime.slots() },
    }))
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ----- events -----

pub async fn emit_events(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Parsed through raw values so every payload keeps the exact bytes the emitter sent.
    let body: Box<RawValue> = parse_json(&headers, &body?)?;
    let batch = body.get().trim_start().starts_with('[');
    let values: Vec<Box<RawValue>> = if batch {
        serde_json::from_str(body.get()).map_err(|e| Error::Json(e.to_string()))?
    } else {
        vec![body]
    };
    let mut inputs = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let at = if batch {
            format!("events[{i}].")
        } else {
            String::new()
        };
        let mut input: EventInput = serde_json::from_str(value.get())
            .map_err(|e| Error::Json(format!("{}{e}", at.trim_end_matches('.'))))?;
        if let Some(tenant) = &who.tenant {
            match &input.tenant {
                None => input.tenant = Some(tenant.clone()),
                Some(t) if t == tenant => {}
                Some(t) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                        "{at}tenant: this key may only emit events of tenant `{tenant}`, not `{t}`"
                    ),
                    ))
                }
            }
        }
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

/// The tenant whose events a call reads: a tenant-bound key's own, or an unbound key's
/// `tenant` parameter (absent: events without a tenant). Event ids are unique per tenant.
fn events_tenant(
    who: &Principal,
    params: &mut BTreeMap<String, String>,
) -> ApiResult<Option<String>> {
    let given = params.remove("tenant");
    match (&who.tenant, given) {
        (None, given) => Ok(given),
        (Some(own), Some(given)) if &given != own => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("tenant: this key reads only events of tenant `{own}`"),
        )),
        (Some(own), _) => Ok(Some(own.clone())),
    }
}

pub async fn get_event(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let Query(mut params) = params?;
    let tenant = events_tenant(&who, &mut params)?;
    if let Some(other) = params.keys().next() {
        return Err(Error::invalid(
            other.clone(),
            "is not a parameter of this endpoint; it takes tenant",
        )
        .into());
    }
    let event = p.event(tenant.as_deref(), &id)?;
    Ok(Json(event).into_response())
}

/// Most ids one `GET /v1/events?ids=` takes.
const MAX_EVENT_IDS: usize = 1000;

/// A list answer `{"data": …}`, serialised straight from its items: an event's payload is
/// written as it was received, never rebuilt as a JSON value (which would refuse a payload
/// nested deeper than serde_json's recursion limit once it sits inside the list).
#[derive(serde::Serialize)]
struct Data<T> {
    data: T,
}

pub async fn list_events(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Response> {
    let Query(mut params) = params?;
    let tenant = events_tenant(&who, &mut params)?;
    let ids = params
        .remove("ids")
        .ok_or_else(|| Error::invalid("ids", "give the events' ids, separated by commas"))?;
    if let Some(other) = params.keys().next() {
        return Err(Error::invalid(
            other.clone(),
            "is not a parameter of this list; it takes ids and tenant",
        )
        .into());
    }
    let ids: Vec<&str> = ids.split(',').filter(|i| !i.is_empty()).collect();
    if ids.is_empty() || ids.len() > MAX_EVENT_IDS {
        return Err(Error::invalid("ids", format!("give 1 to {MAX_EVENT_IDS} ids")).into());
    }
    let mut events = Vec::with_capacity(ids.len());
    for id in ids {
        events.push(p.event(tenant.as_deref(), id)?);
    }
    Ok(Json(Data { data: events }).into_response())
}

// ----- modules -----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    name: Option<String>,
    version: Option<String>,
}

pub async fn upload_module(
    State(p): State<AppState>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
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
            .map_err(internal)??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

pub async fn list_modules(State(p): State<AppState>, params: Params) -> ApiResult<Response> {
    let Query(params) = params?;
    let query = list_query(params, &["created_at", "name", "size"], false)?;
    Ok(Json(p.list_modules(query)?).into_response())
}

pub async fn get_module(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let expanded = expand(&params, &["webhooks"])?;
    let info = p.module(&id)?;
    // A shared module shows a tenant-bound caller only its own tenant's webhooks.
    let users: Vec<Webhook> = p
        .module_users(&info.id)
        .iter()
        .filter_map(|id| p.webhook(id.as_str()).ok())
        .filter(|w| who.sees(w.tenant.as_deref()))
        .collect();
    let mut view = serde_json::to_value(&info).map_err(internal)?;
    view["used_by"] = json!(users.iter().map(|w| &w.id).collect::<Vec<_>>());
    if expanded.iter().any(|e| e == "webhooks") {
        view["webhooks"] = json!(users);
    }
    Ok(Json(view).into_response())
}

pub async fn delete_module(
    State(p): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(p.delete_module(&id)?).into_response())
}

// ----- connections -----

pub async fn create_connection(
    State(p): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = body?;
    let _: Box<RawValue> = parse_json(&headers, &body)?;
    let input = ConnectionInput::from_json(&body)?;
    let connection = p.create_connection(input)?;
    Ok((StatusCode::CREATED, Json(connection.public())).into_response())
}

pub async fn list_connections(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let query = list_query(params, &["created_at", "updated_at", "name"], false)?;
    let page = p.list_connections(query, who.tenant.as_deref())?;
    Ok(Json(page.map(|c| c.public())).into_response())
}

pub async fn get_connection(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let expanded = expand(&params, &["webhooks"])?;
    let connection = visible_connection(&p, &who, &id)?;
    let mut view = connection.public();
    if expanded.iter().any(|e| e == "webhooks") {
        let hooks: Vec<Webhook> = p
            .webhooks()
            .into_iter()
            .filter(|w| w.connection_id.as_ref() == Some(&connection.id))
            .filter(|w| who.sees(w.tenant.as_deref()))
            .collect();
        view["webhooks"] = json!(hooks);
    }
    Ok(Json(view).into_response())
}

pub async fn update_connection(
    State(p): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = body?;
    let _: Box<RawValue> = parse_json(&headers, &body)?;
    let input = ConnectionInput::from_json(&body)?;
    Ok(Json(p.update_connection(&id, input)?.public()).into_response())
}

pub async fn delete_connection(
    State(p): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(p.delete_connection(&id)?.public()).into_response())
}

/// The connection, if the caller may see it: a tenant-bound key sees only connections
/// shared with its tenant (others are "not found").
fn visible_connection(p: &AppState, who: &Principal, id: &str) -> ApiResult<Connection> {
    let connection = p.connection(id)?;
    if !connection.shared_with(who.tenant.as_deref()) {
        return Err(not_found("connection", id));
    }
    Ok(connection)
}

/// Refuses a tenant-bound caller's webhook change that attaches a connection not shared
/// with its tenant (as "not found": it cannot see it).
fn check_connection_use(p: &AppState, who: &Principal, input: &WebhookInput) -> ApiResult<()> {
    if let (Some(_), Some(Some(id))) = (&who.tenant, &input.connection_id) {
        visible_connection(p, who, id)?;
    }
    Ok(())
}

// ----- webhooks -----

/// The webhook, if the caller may see it (others' webhooks are "not found").
fn visible_webhook(p: &AppState, who: &Principal, id: &str) -> ApiResult<Webhook> {
    let webhook = p.webhook(id)?;
    if !who.sees(webhook.tenant.as_deref()) {
        return Err(not_found("webhook", id));
    }
    Ok(webhook)
}

/// Keeps a tenant-bound caller's webhook in its tenant.
fn pin_tenant(who: &Principal, input: &mut WebhookInput) -> ApiResult<()> {
    let Some(tenant) = &who.tenant else {
        return Ok(());
    };
    match &input.tenant {
        None => input.tenant = Some(Some(tenant.clone())),
        Some(Some(t)) if t == tenant => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("tenant: this key manages only webhooks of tenant `{tenant}`"),
            ))
        }
    }
    Ok(())
}

pub async fn create_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = body?;
    let _: Box<RawValue> = parse_json(&headers, &body)?;
    let mut input = WebhookInput::from_json(&body)?;
    pin_tenant(&who, &mut input)?;
    check_connection_use(&p, &who, &input)?;
    let (webhook, issued) = p.create_webhook_signed(input)?;
    let mut view = serde_json::to_value(&webhook).map_err(internal)?;
    // A secret the host generated is shown this once; a given one is never echoed. A key
    // pair's public key is shown (it cannot sign).
    if let Some(secret) = issued.signing_secret {
        view["signing_secret"] = json!(secret);
    }
    if let Some(public_key) = issued.signing_public_key {
        view["signing_public_keys"] = json!([public_key]);
    }
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn list_webhooks(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Response> {
    let Query(mut params) = params?;
    if let Some(tenant) = &who.tenant {
        params.insert("tenant".into(), tenant.clone());
    }
    let query = list_query(params, &["created_at", "updated_at", "name"], false)?;
    Ok(Json(p.list_webhooks(query)?).into_response())
}

pub async fn get_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let expanded = expand(&params, &["module", "connection"])?;
    let webhook = visible_webhook(&p, &who, &id)?;
    let mut view = serde_json::to_value(&webhook).map_err(internal)?;
    let public_keys = p.signing_public_keys(&webhook)?;
    if !public_keys.is_empty() {
        view["signing_public_keys"] = json!(public_keys);
    }
    for item in expanded {
        match item.as_str() {
            "module" => view["module"] = json!(p.module(webhook.module_id.as_str()).ok()),
            "connection" => {
                view["connection"] = webhook
                    .connection_id
                    .as_ref()
                    .and_then(|c| visible_connection(&p, &who, c.as_str()).ok())
                    .map_or(Value::Null, |c| c.public())
            }
            _ => {}
        }
    }
    Ok(Json(view).into_response())
}

pub async fn update_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    visible_webhook(&p, &who, &id)?;
    let body = body?;
    let _: Box<RawValue> = parse_json(&headers, &body)?;
    let mut input = WebhookInput::from_json(&body)?;
    if input.tenant.is_some() {
        pin_tenant(&who, &mut input)?;
    }
    check_connection_use(&p, &who, &input)?;
    Ok(Json(p.update_webhook(&id, input)?).into_response())
}

pub async fn delete_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    visible_webhook(&p, &who, &id)?;
    Ok(Json(p.delete_webhook(&id)?).into_response())
}

pub async fn enable_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    set_enabled(&p, &who, &id, true)
}

pub async fn disable_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    set_enabled(&p, &who, &id, false)
}

fn set_enabled(p: &AppState, who: &Principal, id: &str, enabled: bool) -> ApiResult<Response> {
    visible_webhook(p, who, id)?;
    let input = WebhookInput {
        enabled: Some(enabled),
        ..WebhookInput::default()
    };
    Ok(Json(p.update_webhook(id, input)?).into_response())
}

pub async fn test_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    visible_webhook(&p, &who, &id)?;
    let input: EventInput = parse_json(&headers, &body?)?;
    let pipeline = p.clone();
    let run = tokio::task::spawn_blocking(move || pipeline.dry_run(&id, input))
        .await
        .map_err(internal)??;
    Ok(Json(run).into_response())
}

pub async fn recover_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    visible_webhook(&p, &who, &id)?;
    let input: RecoverInput = parse_json(&headers, &body?)?;
    let recovered = p.recover(&id, input).await?;
    let data: Vec<Value> = recovered.replayed.iter().map(Delivery::summary).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "replayed": data.len(), "data": data })),
    )
        .into_response())
}

pub async fn rotate_webhook_secret(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    visible_webhook(&p, &who, &id)?;
    let body = body?;
    let input: RotateInput = if body.is_empty() {
        RotateInput::default()
    } else {
        parse_json(&headers, &body)?
    };
    Ok(Json(p.rotate_signing_secret(&id, input)?).into_response())
}

// ----- deliveries -----

fn visible_delivery(p: &AppState, who: &Principal, id: &str) -> ApiResult<Delivery> {
    let delivery = p.delivery(id)?;
    if !who.sees(delivery.tenant.as_deref()) {
        return Err(not_found("delivery", id));
    }
    Ok(delivery)
}

pub async fn list_deliveries(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let query = list_query(params, &["created_at"], true)?;
    let page = p.list_deliveries(query, who.tenant.as_deref())?;
    Ok(Json(page.map(|d| d.summary())).into_response())
}

/// A delivery with the objects `expand` asked for, serialised straight from them (an
/// event's payload is written as received, whatever its depth).
#[derive(serde::Serialize)]
struct ExpandedDelivery<'a> {
    #[serde(flatten)]
    delivery: &'a Delivery,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<Option<crate::model::Event>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<Option<Webhook>>,
}

pub async fn get_delivery(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let expanded = expand(&params, &["event", "webhook"])?;
    let delivery = visible_delivery(&p, &who, &id)?;
    let mut view = ExpandedDelivery {
        delivery: &delivery,
        event: None,
        webhook: None,
    };
    for item in expanded {
        match item.as_str() {
            "event" => {
                let event = p.event(delivery.events_tenant(), delivery.event_id.as_str());
                view.event = Some(event.ok());
            }
            "webhook" => {
                // The delivery's tenant is its webhook's, so a caller who sees one sees both.
                let webhook = p.webhook(delivery.webhook_id.as_str()).ok();
                view.webhook = Some(webhook.filter(|w| who.sees(w.tenant.as_deref())));
            }
            _ => {}
        }
    }
    Ok(Json(view).into_response())
}

pub async fn replay_delivery(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    visible_delivery(&p, &who, &id)?;
    let replay = p.replay(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(replay)).into_response())
}

// ----- API keys -----

pub async fn create_key(
    State(p): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let input: KeyInput = parse_json(&headers, &body?)?;
    let (key, text) = p.create_key(input)?;
    let mut view = key.public();
    view["key"] = json!(text);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn list_keys(State(p): State<AppState>, params: Params) -> ApiResult<Response> {
    let Query(params) = params?;
    let query = list_query(params, &["created_at", "name"], false)?;
    Ok(Json(p.list_keys(query)?.map(|k| k.public())).into_response())
}

pub async fn get_key(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.api_key(&id)?.public()).into_response())
}

pub async fn revoke_key(State(p): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(p.revoke_key(&id)?.public()).into_response())
}
