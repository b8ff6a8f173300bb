//! Deliveries: list, read (with `expand`), replay.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::super::{expand, list_query, ApiResult, AppState};
use crate::model::{Delivery, Webhook};
use crate::pipeline::Principal;

use super::{delivery_id, not_found, Params};

fn visible_delivery(p: &AppState, who: &Principal, id: &str) -> ApiResult<Delivery> {
    let delivery = p.delivery(&delivery_id(id)?)?;
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
    let page = p.list_deliveries(query, who.tenant.as_deref()).await?;
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
                // Not one stored under the same id after the delivery's own was pruned.
                let event = p
                    .event(delivery.events_tenant(), &delivery.event_id)
                    .ok()
                    .filter(|e| {
                        !delivery.status.is_final() || e.received_at <= delivery.updated_at
                    });
                view.event = Some(event);
            }
            "webhook" => {
                // The delivery's tenant is its webhook's, so a caller who sees one sees both.
                let webhook = p.catalog().webhook(&delivery.webhook_id).ok();
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
    let replay = p.replay(&delivery_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(replay)).into_response())
}

// ----- API keys -----
