//! `GET /v1/reconciliation/*` over HTTP: finance and admins only; bad input is a clear
//! 4xx problem. The figures themselves are covered in the projection's tests and the
//! end-to-end checkout.

mod common;

use common::{Backend, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use shopagent::auth::Role;

on_both_backends!(
    reconciliation_is_for_finance_and_admins,
    bad_reconciliation_queries_are_refused_clearly,
);

async fn reconciliation_is_for_finance_and_admins(backend: Backend) {
    let app = spawn_app(backend).await;
    for (role, expected) in [
        (Role::Finance, StatusCode::OK),
        (Role::Admin, StatusCode::OK),
        (Role::Shopper, StatusCode::FORBIDDEN),
        (Role::Agent, StatusCode::FORBIDDEN),
        (Role::Auditor, StatusCode::FORBIDDEN),
        (Role::Ops, StatusCode::FORBIDDEN),
    ] {
        let mandate = uuid::Uuid::new_v4().to_string();
        let mandate = (role == Role::Agent).then_some(mandate.as_str());
        let token = app.token("acme", "someone", role, mandate);
        for path in [
            "/v1/reconciliation/daily?date=2026-11-20",
            "/v1/reconciliation/exceptions",
        ] {
            let reply = app.get(path, &token).await;
            assert_eq!(reply.status, expected, "{role:?} {path}: {:?}", reply.body);
        }
    }
    let finance = app.token("acme", "finance-1", Role::Finance, None);
    let empty = app
        .get("/v1/reconciliation/daily?date=2026-11-20", &finance)
        .await;
    assert_eq!(
        empty.body,
        json!({"date": "2026-11-20", "capture_days": 7, "totals": []})
    );
    let none = app.get("/v1/reconciliation/exceptions", &finance).await;
    assert_eq!(none.body, json!({"exceptions": [], "next_cursor": null}));
    app.stop().await;
}

async fn bad_reconciliation_queries_are_refused_clearly(backend: Backend) {
    let app = spawn_app(backend).await;
    let finance = app.token("acme", "finance-1", Role::Finance, None);
    for path in [
        "/v1/reconciliation/daily",
        "/v1/reconciliation/daily?date=yesterday",
        "/v1/reconciliation/daily?date=2026-13-01",
        "/v1/reconciliation/daily?date=2026-11-20&extra=1",
        "/v1/reconciliation/exceptions?reason=nonsense",
        "/v1/reconciliation/exceptions?limit=0",
        "/v1/reconciliation/exceptions?limit=101",
        "/v1/reconciliation/exceptions?cursor=zz",
        "/v1/reconciliation/exceptions?from=20261120",
        "/v1/reconciliation/exceptions?merchant=Not%20A%20Slug",
    ] {
        let reply = app.get(path, &finance).await;
        // 400 for a malformed query, 422 for a value that breaks a rule.
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY].contains(&reply.status),
            "{path}: {:?}",
            reply.body
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
        assert!(reply.body["code"].is_string(), "{path}: {:?}", reply.body);
    }
    app.stop().await;
}
