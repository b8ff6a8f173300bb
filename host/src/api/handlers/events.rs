//! Events: emit (one or an array), read one, read several by id.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use serde_json::value::RawValue;

use super::super::{parse_json, ApiError, ApiResult, AppState};
use crate::pipeline::{Error, EventInput, Principal};

use super::{event_id, Body, Params};

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
    let event = p.event(tenant.as_deref(), &event_id(&id)?)?;
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
        events.push(p.event(tenant.as_deref(), &event_id(id)?)?);
    }
    Ok(Json(Data { data: events }).into_response())
}
