//! Authentication and authorization: every route but the public ones needs
//! `Authorization: Bearer <key>`; the route's [`Access`] says which keys may call it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::model::Role;
use crate::pipeline::{Pipeline, Principal};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the OpenAPI document).
    Public,
    /// Any valid key: emitters and admins (emit and read events).
    Emitter,
    /// Admin keys, tenant-bound ones included (they see only their tenant).
    Admin,
    /// Admin keys not bound to a tenant (modules, connections and keys are shared).
    Root,
    /// What [`Access::Root`] lets in, and the metrics token (`api.metrics_token`), which lets
    /// a monitoring system scrape `/metrics` and nothing else.
    Metrics,
}

/// Checks the caller's key against the route's access and hands the handler a
/// [`crate::pipeline::Principal`].
pub async fn require(
    State((pipeline, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    if access == Access::Metrics && holds_metrics_token(&pipeline, request.headers()) {
        return next.run(request).await;
    }
    let principal = match caller(&pipeline, request.headers()) {
        Ok(Some(principal)) => principal,
        Ok(None) => return unauthorized("missing API key: send `Authorization: Bearer <key>`"),
        Err(refused) => return refused.into_response(),
    };
    if let Err(message) = allowed(&principal, access) {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Whether the caller of a public route holds a key that [`Access::Root`] lets in: what
/// public routes show only to such keys (host-wide figures) depends on it.
///
/// # Errors
/// The 401 every route answers for a malformed `Authorization` header or an invalid key.
pub fn is_root(pipeline: &Pipeline, headers: &HeaderMap) -> Result<bool, Unauthorized> {
    Ok(caller(pipeline, headers)?.is_some_and(|p| allowed(&p, Access::Root).is_ok()))
}

/// Whether the request's bearer token is the configured metrics token.
fn holds_metrics_token(pipeline: &Pipeline, headers: &HeaderMap) -> bool {
    let Some(expected) = &pipeline.config().api.metrics_token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| pipeline.catalog().is_secret(token.trim(), expected))
}

/// The key's holder; `None` when the request has no `Authorization` header.
fn caller(pipeline: &Pipeline, headers: &HeaderMap) -> Result<Option<Principal>, Unauthorized> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = match value.to_str().unwrap_or("").strip_prefix("Bearer ") {
        Some(token) if !token.trim().is_empty() => token.trim(),
        _ => {
            return Err(Unauthorized(
                "the Authorization header must be `Bearer <key>`",
            ))
        }
    };
    match pipeline.catalog().authenticate(token) {
        Some(principal) => Ok(Some(principal)),
        None => Err(Unauthorized("invalid or revoked API key")),
    }
}

/// Whether `principal` may call a route with `access`; if not, why.
fn allowed(principal: &Principal, access: Access) -> Result<(), String> {
    match access {
        Access::Public | Access::Emitter => Ok(()),
        Access::Admin if principal.role == Role::Admin => Ok(()),
        Access::Root | Access::Metrics
            if principal.role == Role::Admin && principal.tenant.is_none() =>
        {
            Ok(())
        }
        Access::Metrics => Err(
            "/metrics shows host-wide figures: it takes an admin key without a tenant, or the \
             metrics token (api.metrics_token)"
                .to_string(),
        ),
        Access::Root if principal.role == Role::Admin => Err(format!(
            "this key is bound to tenant `{}`; modules, connections and keys are managed with an admin key that has no tenant",
            principal.tenant.as_deref().unwrap_or_default()
        )),
        Access::Admin | Access::Root => Err(
            "this key has the emitter role (emit and read events); this route needs an admin key"
                .to_string(),
        ),
    }
}

/// A key that is malformed or not valid: why (a 401).
#[derive(Debug)]
pub struct Unauthorized(&'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        unauthorized(self.0)
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}
