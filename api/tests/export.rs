//! `GET /v1/events/export` over HTTP: auditors get their tenant's log as hash-chained
//! NDJSON that verifies, redacted on request; nobody else gets it.

mod common;

use common::{Backend, TestApp, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use shopagent::auth::Role;
use shopagent_commands::export::verify;

on_both_backends!(
    an_auditor_exports_the_tenant_s_log_and_it_verifies,
    only_auditors_and_admins_export,
);

/// A cart with an address, by `shopper` of `tenant`.
async fn cart_with_address(app: &TestApp, tenant: &str, shopper: &str) {
    let token = app.token(tenant, shopper, Role::Shopper, None);
    let cart = app
        .post("/v1/carts", &token, json!({"currency": "USD"}))
        .await
        .body["id"]
        .as_str()
        .expect("cart")
        .to_owned();
    let address = json!({"name": "Grace Hopper", "line1": "1 Navy Yard", "city": "Arlington", "postal_code": "22202", "country": "US"});
    let set = app
        .post(&format!("/v1/carts/{cart}/address"), &token, address)
        .await;
    assert_eq!(set.status, StatusCode::OK);
}

async fn download(app: &TestApp, token: &str, query: &str) -> (StatusCode, Option<String>, String) {
    let response = app
        .client
        .get(app.url(&format!("/v1/events/export{query}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("export");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, content_type, response.text().await.expect("body"))
}

fn records(text: &str) -> u64 {
    verify(
        text.lines()
            .map(|l| Ok::<_, std::convert::Infallible>(l.to_owned())),
    )
    .expect("the export verifies")
    .records
}

async fn an_auditor_exports_the_tenant_s_log_and_it_verifies(backend: Backend) {
    let app = spawn_app(backend).await;
    cart_with_address(&app, "acme", "alice").await;
    cart_with_address(&app, "acme", "bob").await;
    cart_with_address(&app, "globex", "carol").await;
    let auditor = app.token("acme", "audit-1", Role::Auditor, None);

    let (status, content_type, text) = download(&app, &auditor, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    assert_eq!(records(&text), 4, "acme's two carts, two events each");
    assert!(!text.contains("globex"), "another tenant's events stay out");
    assert!(text.contains("Grace Hopper"));

    let (_, _, carts) = download(&app, &auditor, "?aggregate_type=cart&to_position=2").await;
    assert!(records(&carts) <= 2);

    let (_, _, redacted) = download(&app, &auditor, "?redact=true").await;
    assert_eq!(records(&redacted), 4);
    for personal in ["Grace Hopper", "1 Navy Yard", "Arlington", "22202"] {
        assert!(!redacted.contains(personal), "{personal} leaked");
    }
    let (_, _, again) = download(&app, &auditor, "?redact=true").await;
    assert_eq!(redacted, again, "stable pseudonyms, identical hashes");

    let (status, _, problem) = download(&app, &auditor, "?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _, _) = download(&app, &auditor, "?colour=blue").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

async fn only_auditors_and_admins_export(backend: Backend) {
    let app = spawn_app(backend).await;
    cart_with_address(&app, "acme", "alice").await;
    for role in [Role::Shopper, Role::Finance, Role::Ops] {
        let token = app.token("acme", "someone", role, None);
        let (status, _, _) = download(&app, &token, "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role:?}");
    }
    let admin = app.token("acme", "root", Role::Admin, None);
    let (status, _, text) = download(&app, &admin, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(records(&text), 2);
    let response = app
        .client
        .get(app.url("/v1/events/export"))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}
