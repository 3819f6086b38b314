//! HTTP basics: health, readiness, OpenAPI and the router's own problem answers.

mod common;

use common::{Backend, spawn_app};
use reqwest::{Method, StatusCode};

on_both_backends!(
    healthz_says_alive,
    readyz_names_the_store_once_migrated,
    readyz_is_unavailable_when_the_store_is_gone,
    unknown_route_is_a_not_found_problem,
    wrong_method_is_a_method_not_allowed_problem,
    openapi_describes_every_v1_route,
);

async fn healthz_says_alive(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .send(Method::GET, "/healthz", None, None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["status"], "ok");
    app.stop().await;
}

async fn readyz_names_the_store_once_migrated(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .send(Method::GET, "/readyz", None, None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(
        reply.body,
        serde_json::json!({"status": "ready", "store": expected})
    );
    app.stop().await;
}

async fn readyz_is_unavailable_when_the_store_is_gone(backend: Backend) {
    let app = spawn_app(backend).await;
    app.store.database().close().await;
    let reply = app
        .send(Method::GET, "/readyz", None, None, None, None)
        .await;
    reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Liveness does not depend on the store.
    let alive = app
        .send(Method::GET, "/healthz", None, None, None, None)
        .await;
    assert_eq!(alive.status, StatusCode::OK);
    app.stop().await;
}

async fn unknown_route_is_a_not_found_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .send(Method::GET, "/nothing-here", None, None, None, None)
        .await;
    reply.assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

async fn wrong_method_is_a_method_not_allowed_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .send(Method::POST, "/healthz", None, None, None, None)
        .await;
    reply.assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    app.stop().await;
}

async fn openapi_describes_every_v1_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .send(Method::GET, "/openapi.json", None, None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["openapi"], "3.1.0");
    let paths = reply.body["paths"].as_object().expect("paths");
    for path in [
        "/v1/mandates",
        "/v1/mandates/{id}",
        "/v1/mandates/{id}/revoke",
        "/v1/carts/{id}/checkout",
        "/v1/runs/{id}/events",
        "/v1/runs/{id}/approvals/{approval_id}/grant",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(reply.body["components"]["securitySchemes"]["bearer"].is_object());
    // Every operation behind the bearer token says it may answer 401.
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("operations") {
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path} does not document its 401"
                );
            }
        }
    }
    app.stop().await;
}
