//! Definitions: modules, connections and webhooks, each seen only by the tenants it
//! belongs to.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::super::{expand, list_query, parse_json, ApiError, ApiResult, AppState};
use crate::model::{Connection, Delivery, Webhook};
use crate::pipeline::{
    ConnectionInput, Error, EventInput, Principal, RecoverInput, RotateInput, WebhookInput,
};

use super::{connection_id, internal, module_id, not_found, webhook_id, Body, Params};

/// The query of a module upload.
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
    let (info, created) = tokio::task::spawn_blocking(move || {
        pipeline.catalog().upload_module(&name, &version, &body)
    })
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
    Ok(Json(p.catalog().list_modules(query)?).into_response())
}

pub async fn get_module(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let expanded = expand(&params, &["webhooks"])?;
    let info = p.catalog().module(&module_id(&id)?)?;
    // A shared module shows a tenant-bound caller only its own tenant's webhooks.
    let users: Vec<Webhook> = p
        .catalog()
        .module_users(&info.id)
        .iter()
        .filter_map(|id| p.catalog().webhook(id).ok())
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
    Ok(Json(p.catalog().delete_module(&module_id(&id)?)?).into_response())
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
    let connection = p.catalog().create_connection(input)?;
    Ok((StatusCode::CREATED, Json(connection.public())).into_response())
}

pub async fn list_connections(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    params: Params,
) -> ApiResult<Response> {
    let Query(params) = params?;
    let query = list_query(params, &["created_at", "updated_at", "name"], false)?;
    let page = p.catalog().list_connections(query, who.tenant.as_deref())?;
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
            .catalog()
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
    Ok(Json(
        p.catalog()
            .update_connection(&connection_id(&id)?, input)?
            .public(),
    )
    .into_response())
}

pub async fn delete_connection(
    State(p): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(
        p.catalog()
            .delete_connection(&connection_id(&id)?)?
            .public(),
    )
    .into_response())
}

/// The connection, if the caller may see it: a tenant-bound key sees only connections
/// shared with its tenant (others are "not found").
fn visible_connection(p: &AppState, who: &Principal, id: &str) -> ApiResult<Connection> {
    let connection = p.catalog().connection(&connection_id(id)?)?;
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

/// The webhook as stored now, if the caller may see it (others' webhooks are "not found"):
/// read from storage, not from the copy in memory, which follows another host's move of it
/// to another tenant only a moment later.
fn visible_webhook(p: &AppState, who: &Principal, id: &str) -> ApiResult<Webhook> {
    Ok(p.catalog().webhook_seen_by(&webhook_id(id)?, who)?)
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
    let (webhook, issued) = p.catalog().create_webhook_signed(input)?;
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
    let page = p.catalog().list_webhooks(query)?;
    Ok(Json(page.map(|w| webhook_view(&p, &w))).into_response())
}

/// A webhook as the API shows it: its record, and why its deliveries wait when it is
/// enabled but may not send (`waiting_reason`).
fn webhook_view(p: &AppState, webhook: &Webhook) -> Value {
    let mut view = serde_json::to_value(webhook).unwrap_or(Value::Null);
    if let Err(withdrawn) = p.catalog().usable_connection(webhook) {
        view["waiting_reason"] = json!(withdrawn.to_string());
    }
    view
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
    let mut view = webhook_view(&p, &webhook);
    view["usage"] = json!(p.fair_share().usage(&webhook.id));
    let public_keys = p.catalog().signing_public_keys(&webhook)?;
    if !public_keys.is_empty() {
        view["signing_public_keys"] = json!(public_keys);
    }
    for item in expanded {
        match item.as_str() {
            "module" => view["module"] = json!(p.catalog().module(&webhook.module_id).ok()),
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
    let (webhook, issued) = p
        .catalog()
        .update_webhook_signed(&webhook_id(&id)?, input, &who)?;
    let mut view = serde_json::to_value(&webhook).map_err(internal)?;
    // Moved to another tenant: a new secret, shown this once (see create_webhook).
    if let Some(issued) = issued {
        if let Some(secret) = issued.signing_secret {
            view["signing_secret"] = json!(secret);
        }
        if let Some(public_key) = issued.signing_public_key {
            view["signing_public_keys"] = json!([public_key]);
        }
    }
    Ok(Json(view).into_response())
}

pub async fn delete_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    visible_webhook(&p, &who, &id)?;
    let deleted = p.catalog().delete_webhook_as(&webhook_id(&id)?, &who)?;
    p.metrics().forget_webhook(deleted.id.as_str());
    Ok(Json(deleted).into_response())
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

/// Each checks the caller against the webhook as stored, under the catalog's write lock.
fn set_enabled(p: &AppState, who: &Principal, id: &str, enabled: bool) -> ApiResult<Response> {
    let id = webhook_id(id)?;
    if !enabled {
        return Ok(Json(p.catalog().pause_webhook_as(&id, who)?).into_response());
    }
    let input = WebhookInput {
        enabled: Some(enabled),
        ..WebhookInput::default()
    };
    let (enabled, _) = p.catalog().update_webhook_signed(&id, input, who)?;
    Ok(Json(enabled).into_response())
}

/// Evaluation time per webhook, most first, and who is throttled: the webhooks the key may
/// see that have run since the host started.
pub async fn list_usage(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Response> {
    let usages: Vec<_> = p
        .fair_share()
        .usages()
        .into_iter()
        .filter_map(|mut usage| {
            // The webhook as it is now: gone ones are left out, and a tenant key sees its own.
            let webhook = p.catalog().webhook_cached(&usage.webhook_id)?;
            if who.tenant.is_some() && webhook.tenant != who.tenant {
                return None;
            }
            usage.tenant = webhook.tenant.clone();
            Some(usage)
        })
        .collect();
    Ok(Json(json!({ "data": usages })).into_response())
}

pub async fn test_webhook(
    State(p): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let webhook = visible_webhook(&p, &who, &id)?;
    let input: EventInput = parse_json(&headers, &body?)?;
    let run = p.dry_run(&webhook, input).await?;
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
    let recovered = p.recover(&webhook_id(&id)?, input, &who).await?;
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
    let id = webhook_id(&id)?;
    // Not found before the body is read: another tenant's webhook stays invisible.
    p.catalog().webhook_seen_by(&id, &who)?;
    let body = body?;
    let input: RotateInput = if body.is_empty() {
        RotateInput::default()
    } else {
        parse_json(&headers, &body)?
    };
    Ok(Json(p.catalog().rotate_signing_secret_as(&id, input, &who)?).into_response())
}

// ----- deliveries -----
