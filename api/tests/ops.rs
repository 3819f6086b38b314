//! `GET /v1/ops/projections` over HTTP: ops see every reader of the log, its checkpoint,
//! lag and state; nobody else does.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use shopagent::auth::Role;

on_both_backends!(
    ops_see_where_every_reader_of_the_log_stands,
    a_paused_projection_holds_until_resumed,
    ops_rebuild_a_projection_while_it_keeps_answering,
);

async fn ops_see_where_every_reader_of_the_log_stands(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    app.post("/v1/carts", &alice, json!({"currency": "USD"}))
        .await;
    let ops = app.token("acme", "ops-1", Role::Ops, None);

    // The projections catch up with the one event.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = app.get("/v1/ops/projections", &ops).await;
        let caught_up = listed.body["projections"].as_array().is_some_and(|all| {
            all.iter()
                .filter(|p| p["kind"] == "projection")
                .all(|p| p["lag_events"] == 0 && p["events_applied"] == 1)
        });
        if caught_up || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.status, StatusCode::OK);
    let all = listed.body["projections"].as_array().expect("list");
    let names: Vec<&str> = all.iter().filter_map(|p| p["name"].as_str()).collect();
    for name in [
        "aggregate_catalog",
        "orders_hub",
        "checkout_process",
        "tracking_process",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let catalog = common::projection(&listed.body, "aggregate_catalog");
    assert_eq!(
        (&catalog["state"], &catalog["lag_events"], &catalog["error"]),
        (&json!("running"), &json!(0), &json!(null)),
        "{catalog:?}"
    );
    // No process manager runs without its outside service: its lag shows it.
    let checkout = common::projection(&listed.body, "checkout_process");
    assert_eq!(checkout["kind"], "process");
    assert_eq!(checkout["lag_events"], 1);
    assert!(
        checkout["lag_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "how long the waiting event has waited: {checkout:?}"
    );
    assert_eq!(catalog["lag_seconds"], 0.0, "nothing waits for the catalog");
    assert!(
        catalog["events_per_second"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0),
        "it has just applied an event: {catalog:?}"
    );

    for role in [Role::Shopper, Role::Finance, Role::Auditor] {
        let token = app.token("acme", "someone", role, None);
        app.get("/v1/ops/projections", &token)
            .await
            .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    }
    app.stop().await;
}

/// The catalog's row in the list, once `done` holds for it.
async fn catalog_until(
    app: &common::TestApp,
    token: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = app.get("/v1/ops/projections", token).await;
        let catalog = common::projection(&listed.body, "aggregate_catalog");
        if done(&catalog) || Instant::now() > deadline {
            return catalog;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_paused_projection_holds_until_resumed(backend: Backend) {
    let app = spawn_app(backend).await;
    let ops = app.token("acme", "ops-1", Role::Ops, None);
    let alice = app.shopper("alice");
    app.post("/v1/carts", &alice, json!({"currency": "USD"}))
        .await;
    catalog_until(&app, &ops, |c| c["lag_events"] == 0).await;

    let paused = app
        .post(
            "/v1/ops/projections/aggregate_catalog/pause",
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{:?}", paused.body);
    assert_eq!(paused.body["state"], "paused");
    // Events keep coming; the paused projection does not move.
    for _ in 0..3 {
        app.post("/v1/carts", &alice, json!({"currency": "USD"}))
            .await;
    }
    let held = catalog_until(&app, &ops, |c| c["lag_events"] == 3).await;
    assert_eq!(
        (&held["state"], &held["events_applied"]),
        (&json!("paused"), &json!(1))
    );

    let resumed = app
        .post(
            "/v1/ops/projections/aggregate_catalog/resume",
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(resumed.body["state"], "running");
    let caught_up = catalog_until(&app, &ops, |c| c["lag_events"] == 0).await;
    assert_eq!(caught_up["events_applied"], 4, "from where it stopped");

    app.post("/v1/ops/projections/no_such/pause", &ops, json!({}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let auditor = app.token("acme", "audit", Role::Auditor, None);
    app.post(
        "/v1/ops/projections/aggregate_catalog/pause",
        &auditor,
        json!({}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.stop().await;
}

async fn ops_rebuild_a_projection_while_it_keeps_answering(backend: Backend) {
    let app = spawn_app(backend).await;
    let ops = app.token("acme", "ops-1", Role::Ops, None);
    let alice = app.shopper("alice");
    for _ in 0..5 {
        app.post("/v1/carts", &alice, json!({"currency": "USD"}))
            .await;
    }
    catalog_until(&app, &ops, |c| c["lag_events"] == 0).await;

    let started = app
        .post(
            "/v1/ops/projections/aggregate_catalog/rebuild",
            &ops,
            json!({}),
        )
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{:?}", started.body);
    assert_eq!(started.header("location"), Some("/v1/ops/projections"));
    // Writes go on during the rebuild.
    app.post("/v1/carts", &alice, json!({"currency": "USD"}))
        .await;
    let done = catalog_until(&app, &ops, |c| {
        c["state"] == "running" && c["rebuild"].is_null() && c["lag_events"] == 0
    })
    .await;
    assert_eq!(
        (
            &done["state"],
            &done["rebuild"],
            &done["lag_events"],
            &done["events_applied"]
        ),
        (&json!("running"), &json!(null), &json!(0), &json!(6)),
        "{done:?}"
    );
    let rows: i64 = match app.store.database() {
        shopagent_commands::Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM aggregate_catalog")
                .fetch_one(pool)
                .await
        }
        shopagent_commands::Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM aggregate_catalog")
                .fetch_one(pool)
                .await
        }
    }
    .expect("count");
    assert_eq!(rows, 6);

    // A rebuild already claimed elsewhere: refused, not doubled.
    let elsewhere = shopagent_projections::Rebuild::new(
        app.store.clone(),
        std::sync::Arc::new(shopagent_projections::OrdersHub),
    );
    elsewhere.claim().await.expect("claim");
    app.post("/v1/ops/projections/orders_hub/rebuild", &ops, json!({}))
        .await
        .assert_problem(StatusCode::CONFLICT, "rebuild_in_progress");
    app.post("/v1/ops/projections/no_such/rebuild", &ops, json!({}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let finance = app.token("acme", "finance", Role::Finance, None);
    app.post(
        "/v1/ops/projections/aggregate_catalog/rebuild",
        &finance,
        json!({}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.stop().await;
}
