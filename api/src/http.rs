//! Routes, middleware and the small handlers that need no resource module.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::problem::{Problem, ProblemLogged};
use crate::server::App;
use crate::{idempotency, openapi, routes};

/// Longest a readiness probe waits for the store before answering "not ready".
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(app: App) -> Router {
    let v1 = Router::new()
        .merge(routes::mandates::routes())
        .merge(routes::carts::routes())
        .merge(routes::runs::routes())
        .merge(routes::orders::routes())
        .merge(routes::merchants::routes())
        .merge(routes::events::routes())
        .merge(routes::ops::routes())
        .merge(routes::reconciliation::routes())
        // Authentication runs first (outermost), then idempotency, which needs the tenant.
        .layer(middleware::from_fn_with_state(
            app.clone(),
            idempotency::enforce,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .merge(v1)
        // Webhooks authenticate by signature, outside the bearer-token layers.
        .merge(routes::webhooks::routes())
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(idempotency::MAX_BODY))
        .layer(middleware::from_fn(log_problems))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Alive: the process answers. Says nothing about its dependencies.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the store answers and every migration this build knows is applied.
async fn readyz(State(app): State<App>) -> Response {
    // A probe must answer quickly even when the database hangs.
    let ready = tokio::time::timeout(READINESS_TIMEOUT, app.store.database().is_ready()).await;
    if ready.unwrap_or(false) {
        Json(json!({ "status": "ready", "store": app.store.backend().as_str() })).into_response()
    } else {
        Problem::store_unavailable()
            .with_detail("the event store is unreachable or not migrated")
            .into_response()
    }
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}

/// Verifies the bearer token and attaches the caller to the request.
async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Problem::unauthorized("send Authorization: Bearer <token>").into_response();
    };
    match app.auth.verify(token).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => Problem::unauthorized(error.to_string()).into_response(),
    }
}

/// Logs every problem answer once, with its stable code: 5xx as errors, 4xx as info.
async fn log_problems(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(ProblemLogged(code)) = response.extensions().get::<ProblemLogged>() {
        let status = response.status();
        if status.is_server_error() {
            tracing::error!(%method, %path, status = status.as_u16(), code, "request failed");
        } else if status != StatusCode::NOT_FOUND {
            tracing::info!(%method, %path, status = status.as_u16(), code, "request rejected");
        }
    }
    response
}
