//! The authorization matrix: every role, against every endpoint, on its own data and on
//! someone else's. Invisible data answers 404 (never 403: its existence is not
//! disclosed); visible data a role may not change answers 403.

mod common;

use common::{Backend, TestApp, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shopagent::auth::Role;

on_both_backends!(every_role_meets_every_endpoint_as_the_matrix_says);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Reaches the resource: success or a business answer, never 401, 403 or 404.
    Allowed,
    NotFound,
    Forbidden,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    /// A change any writer of the resource may make.
    Write,
    /// A decision only the shopper or an admin may take.
    ShopperDecision,
}

struct Endpoint {
    kind: Kind,
    method: Method,
    path: String,
    body: Option<Value>,
}

struct Caller {
    name: &'static str,
    token: String,
    /// How the caller relates to alice's data.
    relation: Relation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Owner,
    Stranger,
    Agent,
    Reader,
    Admin,
}

fn expected(relation: Relation, kind: Kind) -> Expect {
    match (relation, kind) {
        (Relation::Owner | Relation::Admin, _) => Expect::Allowed,
        (Relation::Stranger, _) => Expect::NotFound,
        (Relation::Agent, Kind::ShopperDecision) => Expect::Forbidden,
        (Relation::Agent, _) => Expect::Allowed,
        (Relation::Reader, Kind::Read) => Expect::Allowed,
        (Relation::Reader, _) => Expect::Forbidden,
    }
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let reply = app.post(path, token, body).await;
    assert!(reply.status.is_success(), "{path}: {:?}", reply.body);
    reply.body
}

async fn every_role_meets_every_endpoint_as_the_matrix_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let terms = json!({"mode": "autopilot", "currency": "USD", "per_order_limit": {"minor": 100_000, "currency": "USD"}});
    let mandate = post(&app, &alice, "/v1/mandates", terms.clone()).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let other_mandate = post(&app, &alice, "/v1/mandates", terms).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let agent = app.token("acme", "agent-1", Role::Agent, Some(&mandate));
    let cart = post(&app, &agent, "/v1/carts", json!({"currency": "USD"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let run = post(&app, &agent, "/v1/runs", json!({"prompt": "a tent"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // An order: a second cart of the agent's, checked out.
    let bought = post(&app, &agent, "/v1/carts", json!({"currency": "USD"})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let line = json!({"offer_id": "sku:1", "merchant": "acme", "title": "Tent", "category": "outdoor", "unit_price": {"minor": 1000, "currency": "USD"}, "quantity": 1});
    post(
        &app,
        &agent,
        &format!("/v1/carts/{bought}/lines"),
        line.clone(),
    )
    .await;
    post(&app, &agent, &format!("/v1/carts/{bought}/address"), json!({"name": "A", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"})).await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let quote = json!({"merchant": "acme", "items_total": {"minor": 1000, "currency": "USD"}, "shipping": {"minor": 0, "currency": "USD"}, "tax": {"minor": 0, "currency": "USD"}, "expires_at": expires});
    post(&app, &agent, &format!("/v1/carts/{bought}/quotes"), quote).await;
    let checkout = post(
        &app,
        &agent,
        &format!("/v1/carts/{bought}/checkout"),
        json!({}),
    )
    .await;
    let order = checkout["sub_carts"][0]["order_id"]
        .as_str()
        .expect("order")
        .to_owned();
    let nil = "00000000-0000-0000-0000-000000000001";

    let endpoints = [
        Endpoint {
            kind: Kind::Read,
            method: Method::GET,
            path: format!("/v1/mandates/{mandate}"),
            body: None,
        },
        Endpoint {
            kind: Kind::ShopperDecision,
            method: Method::POST,
            path: format!("/v1/mandates/{mandate}/reservations/{nil}/approve"),
            body: Some(json!({})),
        },
        Endpoint {
            kind: Kind::ShopperDecision,
            method: Method::POST,
            path: format!("/v1/mandates/{mandate}/reservations/{nil}/deny"),
            body: Some(json!({})),
        },
        Endpoint {
            kind: Kind::Read,
            method: Method::GET,
            path: format!("/v1/carts/{cart}"),
            body: None,
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/carts/{cart}/lines"),
            body: Some(line),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/carts/{cart}/lines/{nil}/quantity"),
            body: Some(json!({"quantity": 2})),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/carts/{cart}/lines/{nil}/remove"),
            body: Some(json!({})),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/carts/{cart}/address"),
            body: Some(
                json!({"name": "A", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"}),
            ),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/carts/{cart}/checkout"),
            body: Some(json!({})),
        },
        Endpoint {
            kind: Kind::Read,
            method: Method::GET,
            path: format!("/v1/runs/{run}"),
            body: None,
        },
        Endpoint {
            kind: Kind::Read,
            method: Method::GET,
            path: format!("/v1/runs/{run}/ledger"),
            body: None,
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/runs/{run}/guardrail-decisions"),
            body: Some(json!({"rule": "r", "outcome": "allowed", "rationale": "ok"})),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/runs/{run}/actions"),
            body: Some(
                json!({"kind": "search", "input_digest": "a".repeat(64), "output_digest": "b".repeat(64), "latency_ms": 1}),
            ),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/runs/{run}/approvals"),
            body: Some(json!({"subject": "buy", "expires_in_seconds": 60})),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/runs/{run}/searches"),
            body: Some(json!({"q": "tent"})),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/runs/{run}/comparisons"),
            body: Some(
                json!({"offers": [{"merchant": "acme", "offer_id": "sku:1"}, {"merchant": "bolt", "offer_id": "sku:1"}]}),
            ),
        },
        Endpoint {
            kind: Kind::ShopperDecision,
            method: Method::POST,
            path: format!("/v1/runs/{run}/approvals/{nil}/grant"),
            body: Some(json!({})),
        },
        Endpoint {
            kind: Kind::ShopperDecision,
            method: Method::POST,
            path: format!("/v1/runs/{run}/approvals/{nil}/deny"),
            body: Some(json!({"reason": "no"})),
        },
        Endpoint {
            kind: Kind::Read,
            method: Method::GET,
            path: format!("/v1/orders/{order}"),
            body: None,
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/orders/{order}/returns"),
            body: Some(json!({"reason": "too small"})),
        },
        Endpoint {
            kind: Kind::Write,
            method: Method::POST,
            path: format!("/v1/orders/{order}/cancel"),
            body: Some(json!({"reason": "changed mind"})),
        },
        // Revocation last: it changes what the other rows may do.
        Endpoint {
            kind: Kind::ShopperDecision,
            method: Method::POST,
            path: format!("/v1/mandates/{mandate}/revoke"),
            body: Some(json!({"reason": "done"})),
        },
    ];
    let callers = [
        Caller {
            name: "bob (another shopper)",
            token: app.shopper("bob"),
            relation: Relation::Stranger,
        },
        Caller {
            name: "agent of another mandate",
            token: app.token("acme", "agent-2", Role::Agent, Some(&other_mandate)),
            relation: Relation::Stranger,
        },
        Caller {
            name: "admin of another tenant",
            token: app.token("globex", "root", Role::Admin, None),
            relation: Relation::Stranger,
        },
        Caller {
            name: "alice in another tenant",
            token: app.token("globex", "alice", Role::Shopper, None),
            relation: Relation::Stranger,
        },
        Caller {
            name: "finance",
            token: app.token("acme", "fin", Role::Finance, None),
            relation: Relation::Reader,
        },
        Caller {
            name: "auditor",
            token: app.token("acme", "aud", Role::Auditor, None),
            relation: Relation::Reader,
        },
        Caller {
            name: "ops",
            token: app.token("acme", "ops", Role::Ops, None),
            relation: Relation::Reader,
        },
        Caller {
            name: "the agent",
            token: agent.clone(),
            relation: Relation::Agent,
        },
        Caller {
            name: "alice",
            token: alice.clone(),
            relation: Relation::Owner,
        },
        Caller {
            name: "admin",
            token: app.token("acme", "root", Role::Admin, None),
            relation: Relation::Admin,
        },
    ];

    let mut failures = Vec::new();
    for endpoint in &endpoints {
        for caller in &callers {
            let key = uuid::Uuid::new_v4().to_string();
            let reply = app
                .send(
                    endpoint.method.clone(),
                    &endpoint.path,
                    Some(&caller.token),
                    Some(&key),
                    endpoint.body.as_ref(),
                    None,
                )
                .await;
            let got = match reply.status {
                StatusCode::NOT_FOUND => Expect::NotFound,
                StatusCode::FORBIDDEN => Expect::Forbidden,
                StatusCode::UNAUTHORIZED => {
                    panic!("{} was not authenticated: {:?}", caller.name, reply.body)
                }
                status if status.is_server_error() => panic!(
                    "{} {} → {status}: {:?}",
                    endpoint.method, endpoint.path, reply.body
                ),
                _ => Expect::Allowed,
            };
            let want = expected(caller.relation, endpoint.kind);
            if got != want {
                failures.push(format!(
                    "{} {} as {}: expected {want:?}, got {} {:?}",
                    endpoint.method, endpoint.path, caller.name, reply.status, reply.body["code"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "authorization matrix violations:\n{}",
        failures.join("\n")
    );
    app.stop().await;
}
