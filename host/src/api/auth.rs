//! Authentication and authorization: every route but the public ones needs
//! `Authorization: Bearer <key>`; the route's [`Access`] says which keys may call it.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::model::Role;

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
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let token = match header {
        None => return unauthorized("missing API key: send `Authorization: Bearer <key>`"),
        Some(value) => match value.strip_prefix("Bearer ") {
            Some(token) if !token.trim().is_empty() => token.trim().to_string(),
            _ => return unauthorized("the Authorization header must be `Bearer <key>`"),
        },
    };
    let Some(principal) = pipeline.catalog().authenticate(&token) else {
        return unauthorized("invalid or revoked API key");
    };
    let allowed = match access {
        Access::Public | Access::Emitter => Ok(()),
        Access::Admin if principal.role == Role::Admin => Ok(()),
        Access::Root if principal.role == Role::Admin && principal.tenant.is_none() => Ok(()),
        Access::Root if principal.role == Role::Admin => Err(format!(
            "this key is bound to tenant `{}`; modules, connections and keys are managed with an admin key that has no tenant",
            principal.tenant.as_deref().unwrap_or_default()
        )),
        Access::Admin | Access::Root => Err(
            "this key has the emitter role (emit and read events); this route needs an admin key"
                .to_string(),
        ),
    };
    if let Err(message) = allowed {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
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
