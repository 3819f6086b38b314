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
        .merge(routes::offers::routes())
        .merge(routes::catalogue::routes())
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
        .route("/metrics", get(prometheus))
        .merge(v1)
        // Webhooks authenticate by signature, outside the bearer-token layers.
        .merge(routes::webhooks::routes())
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(idempotency::MAX_BODY))
        .layer(middleware::from_fn(log_problems))
        .layer(middleware::from_fn(count_requests))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_status),
        )
        .with_state(app)
}

/// The route a request matched, as its template (`/v1/carts/{id}`): a label that never
/// carries ids.
fn route_template(request: &Request) -> &str {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
}

/// The server span of a request: `{method} {route}`, continuing the caller's trace when
/// it sent a W3C `traceparent`.
fn request_span(request: &Request) -> tracing::Span {
    let route = route_template(request);
    let span = tracing::info_span!(
        "http request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    shopagent_commands::trace::continue_trace(&span, traceparent);
    span
}

fn record_status(response: &Response, _latency: Duration, span: &tracing::Span) {
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
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

/// Request count and latency by route template, method and status.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = route_template(&request).to_owned();
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("route", route),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("shopagent_http_requests_total", &labels).increment(1);
    metrics::histogram!("shopagent_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus text format: what the process counted, and each log reader's lag read
/// from the store now.
async fn prometheus(State(app): State<App>) -> Response {
    let mut statuses = Vec::new();
    for (name, kind) in routes::ops::readers(&app) {
        match shopagent_projections::status(&app.store, name).await {
            Ok(status) => statuses.push((status, kind)),
            Err(error) => tracing::warn!(reader = name, %error, "reader status unavailable"),
        }
    }
    match app.search_indexer.status().await {
        Ok(status) => statuses.push((status, "index")),
        Err(error) => tracing::warn!(%error, "search index status unavailable"),
    }
    for (status, kind) in statuses {
        let labels = [("reader", status.name), ("kind", kind.to_owned())];
        metrics::gauge!("shopagent_reader_lag_events", &labels).set(status.lag_events as f64);
        metrics::gauge!("shopagent_reader_lag_seconds", &labels).set(status.lag_seconds);
        metrics::gauge!("shopagent_reader_events_per_second", &labels)
            .set(status.events_per_second);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}

/// Verifies the bearer token and attaches the caller to the request.
async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    // A request the server runs again on its own carries its caller, as authenticated
    // when it first arrived. Only this process sets extensions: no client can.
    if let Some(idempotency::Resumed(principal)) = request.extensions().get().cloned() {
        request.extensions_mut().insert(principal);
        return next.run(request).await;
    }
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
