//! `GET /metrics`: Prometheus text with requests by route and status, commands by
//! aggregate and outcome, appends, and every log reader's lag.

mod common;

use common::{Backend, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use shopagent::auth::Role;

on_both_backends!(metrics_count_requests_commands_appends_and_lag);

async fn metrics_count_requests_commands_appends_and_lag(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let created = app
        .post("/v1/carts", &alice, json!({"currency": "USD"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    // A refused command counts too.
    let refused = app
        .post("/v1/carts", &alice, json!({"currency": "XXX"}))
        .await;
    assert!(refused.status.is_client_error());
    let ops = app.token("acme", "ops-1", Role::Ops, None);
    app.get("/v1/ops/projections", &ops).await;

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain")),
    );
    let text = response.text().await.expect("body");
    for expected in [
        r#"shopagent_http_requests_total{route="/v1/carts",method="POST",status="201"}"#,
        r#"shopagent_http_request_duration_seconds_bucket{route="/v1/carts",method="POST",status="201",le="0.005"}"#,
        r#"shopagent_commands_total{aggregate="cart",outcome="ok"}"#,
        "shopagent_events_appended_total",
        r#"shopagent_reader_lag_events{reader="orders_hub",kind="projection"}"#,
        r#"shopagent_reader_lag_seconds{reader="checkout_process",kind="process"}"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    // Route templates, never raw paths: no id leaks into a label.
    let created_id = created.body["id"].as_str().expect("the cart id");
    assert!(!text.contains(created_id), "an id appears in a label");
    app.stop().await;
}
