//! The `/v1` API over a real server: every endpoint's success and error paths, the
//! authorization matrix, idempotency, optimistic concurrency and the budget race.

mod common;

use common::{Backend, Reply, TestApp, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shopagent::auth::Role;
use shopagent_commands::{Database, LogCursor};

on_both_backends!(
    a_mandate_is_created_read_and_versioned,
    foreign_shoppers_and_tenants_see_nothing,
    read_only_roles_read_across_shoppers_but_change_nothing,
    agents_act_only_under_their_mandate,
    a_retried_post_replays_the_original_response,
    the_last_answers_are_stored_when_the_server_stops,
    a_reused_key_with_another_body_is_refused,
    a_post_without_an_idempotency_key_is_refused,
    a_key_still_in_flight_is_a_conflict,
    a_refusal_is_what_its_retry_gets_even_once_the_request_would_pass,
    copies_of_one_request_sent_at_once_are_performed_once,
    a_key_held_by_a_request_whose_process_died_is_taken_over_by_its_retry,
    a_checkout_interrupted_between_its_commands_is_finished_by_the_server,
    a_stale_if_match_is_a_precondition_failure,
    bad_input_is_a_clear_problem_and_changes_nothing,
    requests_without_a_valid_token_are_unauthorized,
    cart_changes_invalidate_quotes,
    a_quote_s_delivery_estimate_is_a_calendar_date,
    a_whole_number_written_with_a_fraction_counts_as_an_integer,
    a_revocation_reason_is_counted_in_characters,
    checkout_reserves_budget_per_merchant,
    checkout_reports_what_the_mandate_refuses,
    fifty_concurrent_checkouts_never_exceed_the_budget,
    runs_keep_an_append_only_ledger_with_approvals,
    run_entries_stream_as_server_sent_events,
    oidc_tokens_are_verified_against_the_jwks,
    checkout_creates_one_order_per_proceeding_merchant,
    a_drifted_price_waits_for_the_shopper,
    checkout_follows_the_capability_registry,
    the_orders_hub_lists_each_caller_s_orders_newest_first,
);

/// Two servers on one PostgreSQL database: the cart is changed on one and checked out
/// on the other, which kept an older state of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_holds_the_lines_checkout_locked_whichever_server_changed_them_last() {
    let first = spawn_app(Backend::Postgres).await;
    register_merchants(&first, &["acme"]).await;
    let alice = first.shopper("alice");
    let mandate = create_mandate(&first, &alice, mandate_terms()).await;
    let cart = ready_cart(
        &first,
        &alice,
        Some(&mandate),
        &[("acme", 1_000, "outdoor")],
    )
    .await;

    let second = first.another_instance().await;
    let pole = json!({"offer_id": "sku:pole", "merchant": "acme", "title": "Pole", "category": "outdoor", "unit_price": usd(200), "quantity": 1});
    let added = second
        .post(&format!("/v1/carts/{cart}/lines"), &alice, pole)
        .await;
    assert_eq!(added.status, StatusCode::OK, "{:?}", added.body);
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let quote = json!({"merchant": "acme", "items_total": usd(1_200), "shipping": usd(100), "tax": usd(100), "expires_at": expires});
    let quoted = second
        .post(&format!("/v1/carts/{cart}/quotes"), &alice, quote)
        .await;
    assert_eq!(quoted.status, StatusCode::OK, "{:?}", quoted.body);
    second.stop().await;

    // The first server still keeps the cart with one line.
    let reply = first
        .post(&format!("/v1/carts/{cart}/checkout"), &alice, json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        outcome(&reply, "acme")["status"],
        "reserved",
        "{:?}",
        reply.body
    );
    let order_id = outcome(&reply, "acme")["order_id"]
        .as_str()
        .expect("order")
        .to_owned();
    let order = first.get(&format!("/v1/orders/{order_id}"), &alice).await;
    assert_eq!(order.body["total"], usd(1_400), "{:?}", order.body);
    let mut titles: Vec<&str> = order.body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|line| line["title"].as_str())
        .collect();
    titles.sort_unstable();
    assert_eq!(titles, ["Item", "Pole"], "{:?}", order.body);
    first.stop().await;
}

fn usd(minor: i64) -> Value {
    json!({"minor": minor, "currency": "USD"})
}

fn mandate_terms() -> Value {
    json!({
        "mode": "autopilot",
        "currency": "USD",
        "period_budget": {"period": "week", "limit": usd(50_000)},
        "per_order_limit": usd(20_000),
        "approval_threshold": usd(15_000),
        "blocked_categories": ["alcohol"],
        "price_drift_tolerance_bps": 300
    })
}

/// Registers merchants that take orders over a UCP API.
async fn register_merchants(app: &TestApp, names: &[&str]) {
    let ops = app.token("acme", "ops-1", Role::Ops, None);
    for name in names {
        let body = json!({"merchant_id": name, "name": format!("{name} store"), "protocol": "ucp", "api_endpoint": format!("https://{name}.example/ucp"), "deeplink_base": format!("https://{name}.example/p/"), "paths": ["api", "deeplink"]});
        let reply = app.post("/v1/merchants", &ops, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
}

async fn create_mandate(app: &TestApp, token: &str, terms: Value) -> String {
    let reply = app.post("/v1/mandates", token, terms).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_owned()
}

/// A cart with one line per `(merchant, unit price, category)`, an address, and a quote
/// per merchant whose items total equals the line (plus 100 shipping and 100 tax).
async fn ready_cart(
    app: &TestApp,
    token: &str,
    mandate: Option<&str>,
    lines: &[(&str, i64, &str)],
) -> String {
    let reply = app
        .post(
            "/v1/carts",
            token,
            json!({"currency": "USD", "mandate_id": mandate}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let cart = reply.body["id"].as_str().expect("id").to_owned();
    for (merchant, price, category) in lines {
        let line = json!({"offer_id": "sku:item", "merchant": merchant, "title": "Item", "category": category, "unit_price": usd(*price), "quantity": 1});
        let reply = app
            .post(&format!("/v1/carts/{cart}/lines"), token, line)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let address = json!({"name": "Ada Shopper", "line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"});
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/address"), token, address)
            .await
            .status,
        StatusCode::OK
    );
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    for (merchant, price, _) in lines {
        let quote = json!({"merchant": merchant, "items_total": usd(*price), "shipping": usd(100), "tax": usd(100), "expires_at": expires});
        let reply = app
            .post(&format!("/v1/carts/{cart}/quotes"), token, quote)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    cart
}

/// A new cart of `token`'s, with nothing in it: its id.
async fn empty_cart(app: &TestApp, token: &str) -> String {
    let cart = app
        .post("/v1/carts", token, json!({"currency": "USD"}))
        .await;
    cart.body["id"].as_str().expect("id").to_owned()
}

/// A line of one tent at 5.00 USD, offered as `offer` by acme.
fn tent(offer: &str) -> Value {
    json!({"offer_id": offer, "merchant": "acme", "title": "Tent", "category": "outdoor", "unit_price": usd(500), "quantity": 1})
}

async fn events_in_log(app: &TestApp) -> i64 {
    app.store
        .count_after(LogCursor::START)
        .await
        .expect("count")
}

async fn a_mandate_is_created_read_and_versioned(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let created = app.post("/v1/mandates", &alice, mandate_terms()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().expect("id");
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/mandates/{id}").as_str())
    );
    assert_eq!(created.etag(), "\"1\"");
    assert_eq!(created.body["shopper"], "alice");
    assert_eq!(created.body["per_order_limit"], usd(20_000));

    let read = app.get(&format!("/v1/mandates/{id}"), &alice).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.etag(), "\"1\"");
    assert_eq!(read.body, created.body);
    app.stop().await;
}

async fn foreign_shoppers_and_tenants_see_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let id = create_mandate(&app, &alice, mandate_terms()).await;
    let path = format!("/v1/mandates/{id}");
    let bob = app.shopper("bob");
    app.get(&path, &bob)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.post(
        &format!("{path}/revoke"),
        &bob,
        json!({"reason": "mine now"}),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let alice_elsewhere = app.token("globex", "alice", Role::Shopper, None);
    app.get(&path, &alice_elsewhere)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let admin_elsewhere = app.token("globex", "root", Role::Admin, None);
    app.get(&path, &admin_elsewhere)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let cart = ready_cart(&app, &alice, Some(&id), &[("acme", 1_000, "outdoor")]).await;
    app.get(&format!("/v1/carts/{cart}"), &bob)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.post(&format!("/v1/carts/{cart}/checkout"), &bob, json!({}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

async fn read_only_roles_read_across_shoppers_but_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let id = create_mandate(&app, &alice, mandate_terms()).await;
    let path = format!("/v1/mandates/{id}");
    for role in [Role::Finance, Role::Auditor, Role::Ops, Role::Admin] {
        let token = app.token("acme", "staff", role, None);
        assert_eq!(
            app.get(&path, &token).await.status,
            StatusCode::OK,
            "{role:?} reads"
        );
    }
    let before = events_in_log(&app).await;
    for role in [Role::Finance, Role::Auditor, Role::Ops] {
        let token = app.token("acme", "staff", role, None);
        app.post(&format!("{path}/revoke"), &token, json!({"reason": "no"}))
            .await
            .assert_problem(StatusCode::FORBIDDEN, "forbidden");
        app.post("/v1/mandates", &token, mandate_terms())
            .await
            .assert_problem(StatusCode::FORBIDDEN, "forbidden");
        app.post("/v1/carts", &token, json!({"currency": "USD"}))
            .await
            .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(events_in_log(&app).await, before);
    let admin = app.token("acme", "root", Role::Admin, None);
    let revoked = app
        .post(
            &format!("{path}/revoke"),
            &admin,
            json!({"reason": "fraud"}),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.body["revoked"], true);
    app.stop().await;
}

async fn agents_act_only_under_their_mandate(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let other = create_mandate(&app, &alice, mandate_terms()).await;
    let agent = app.token("acme", "agent-7", Role::Agent, Some(&mandate));
    assert_eq!(
        app.get(&format!("/v1/mandates/{mandate}"), &agent)
            .await
            .status,
        StatusCode::OK
    );
    app.get(&format!("/v1/mandates/{other}"), &agent)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.post("/v1/mandates", &agent, mandate_terms())
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.post(
        &format!("/v1/mandates/{mandate}/revoke"),
        &agent,
        json!({"reason": "x"}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");

    // The agent's cart belongs to the mandate's shopper, under its mandate.
    let cart = app
        .post("/v1/carts", &agent, json!({"currency": "USD"}))
        .await;
    assert_eq!(cart.status, StatusCode::CREATED);
    assert_eq!(cart.body["shopper"], "alice");
    assert_eq!(cart.body["mandate_id"], mandate.as_str());
    app.post(
        "/v1/carts",
        &agent,
        json!({"currency": "USD", "mandate_id": other}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    // Alice sees it; the agent of another mandate does not.
    let cart_path = format!("/v1/carts/{}", cart.body["id"].as_str().expect("id"));
    assert_eq!(app.get(&cart_path, &alice).await.status, StatusCode::OK);
    let stranger = app.token("acme", "agent-8", Role::Agent, Some(&other));
    app.get(&cart_path, &stranger)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

/// Answers are stored behind their responses; a server stopping writes those it still
/// holds before it closes the store, so a retry after a restart replays them.
async fn the_last_answers_are_stored_when_the_server_stops(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let keys: Vec<String> = (0..5).map(|i| format!("last-{i}")).collect();
    for key in &keys {
        let reply = app
            .send(
                Method::POST,
                "/v1/mandates",
                Some(&alice),
                Some(key),
                Some(&mandate_terms()),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    const SQL: &str =
        "SELECT idempotency_key, state, status FROM http_idempotency ORDER BY idempotency_key";
    let stored: Vec<(String, String, Option<i32>)> = app
        .stop_then(async |store| {
            shopagent_commands::on_pool!(store.database(), pool => sqlx::query_as(SQL).fetch_all(pool).await)
                .expect("records")
        })
        .await;
    let expected: Vec<(String, String, Option<i32>)> = keys
        .into_iter()
        .map(|key| (key, "done".to_owned(), Some(201)))
        .collect();
    assert_eq!(stored, expected);
}

async fn a_retried_post_replays_the_original_response(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let terms = mandate_terms();
    let first = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some("create-1"),
            Some(&terms),
            None,
        )
        .await;
    let retry = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some("create-1"),
            Some(&terms),
            None,
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.etag(), first.etag());
    assert_eq!(retry.header("location"), first.header("location"));
    assert_eq!(events_in_log(&app).await, 1, "one mandate, created once");
    app.stop().await;
}

async fn a_reused_key_with_another_body_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    app.send(
        Method::POST,
        "/v1/mandates",
        Some(&alice),
        Some("k"),
        Some(&mandate_terms()),
        None,
    )
    .await;
    let mut other = mandate_terms();
    other["mode"] = json!("assist");
    let reply = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some("k"),
            Some(&other),
            None,
        )
        .await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    assert_eq!(events_in_log(&app).await, 1);
    app.stop().await;
}

async fn a_post_without_an_idempotency_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let reply = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            None,
            Some(&mandate_terms()),
            None,
        )
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "idempotency_key_required");
    let long = "k".repeat(201);
    let reply = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some(&long),
            Some(&mandate_terms()),
            None,
        )
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    assert_eq!(events_in_log(&app).await, 0);
    app.stop().await;
}

/// The process died during a checkout: the cart's checkout committed, the budget and
/// the order did not, and the caller never retried. The server runs the request again
/// as its caller: the cart's command replays, the rest is done, and the answer waits
/// for the caller's retry.
async fn a_checkout_interrupted_between_its_commands_is_finished_by_the_server(backend: Backend) {
    let app = common::spawn_app_with_server(backend, None, |server| {
        server.with_resume_after(std::time::Duration::ZERO)
    })
    .await;
    register_merchants(&app, &["acme"]).await;
    let (mandate, agent, cart) = common::checkout::cart_ready_to_check_out(&app).await;
    let path = format!("/v1/carts/{cart}/checkout");
    let body = b"{}";
    let hash = shopagent::idempotency::request_hash("POST", &path, body);
    let key = "checkout-interrupted";

    // What the request had done when its process died: the cart's checkout.
    let metadata = shopagent_domain::EventMetadata {
        idempotency_key: shopagent_domain::IdempotencyKey::parse(key).ok(),
        request_digest: Some(hash.clone()),
        ..shopagent_domain::EventMetadata::new("acme", "agent:agent-1")
    };
    shopagent_commands::CommandBus::<shopagent_domain::cart::Cart>::new(app.store.clone())
        .execute(
            &format!("acme/{cart}"),
            shopagent_domain::cart::CartCommand::StartCheckout {
                price_drift_tolerance_bps: 0,
                at: time::OffsetDateTime::now_utc(),
            },
            metadata,
        )
        .await
        .expect("the cart's checkout");
    // Its key, still held by the dead process (the lease ran out), with the request.
    let request = json!({
        "method": "POST", "uri": path, "content_type": "application/json", "traceparent": null,
        "principal": {"subject": "agent-1", "tenant": "acme", "role": "agent", "mandate": mandate},
    })
    .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    const INSERT: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state, lease_until_ms, created_at_ms, request, request_body)
         VALUES ('acme', $1, $2, 'in_flight', $3, $3, $4, $5)";
    shopagent_commands::on_pool!(app.store.database(), pool => sqlx::query(INSERT)
        .bind(key)
        .bind(&hash)
        .bind(now - 1_000)
        .bind(&request)
        .bind(&body[..])
        .execute(pool)
        .await
        .map(drop))
    .expect("insert");

    // The server finishes it on its own.
    const STATE: &str =
        "SELECT state, request IS NULL FROM http_idempotency WHERE idempotency_key = $1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (state, dropped): (String, bool) = shopagent_commands::on_pool!(
            app.store.database(),
            pool => sqlx::query_as(STATE).bind(key).fetch_one(pool).await
        )
        .expect("select");
        if state == "done" {
            assert!(dropped, "the kept request goes with its answer");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the interrupted checkout was not finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The caller's retry gets that answer: budget reserved, the order created.
    let retry = app
        .send(
            Method::POST,
            &path,
            Some(&agent),
            Some(key),
            Some(&json!({})),
            None,
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        retry.body["sub_carts"][0]["status"], "reserved",
        "{:?}",
        retry.body
    );
    let order = retry.body["sub_carts"][0]["order_id"]
        .as_str()
        .expect("an order");
    assert_eq!(
        app.get(&format!("/v1/orders/{order}"), &agent).await.status,
        StatusCode::OK
    );
    let mandate = app
        .get(&format!("/v1/mandates/{mandate}"), &app.shopper("alice"))
        .await;
    assert_eq!(
        mandate.body["open_reservations"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        mandate.body
    );
}

async fn a_key_still_in_flight_is_a_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    // A first request holds the key: its lease runs for another minute.
    let lease = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 60_000;
    let body = serde_json::to_vec(&mandate_terms()).expect("json");
    let hash = {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"POST\0/v1/mandates\0");
        hasher.update(&body);
        hex::encode(hasher.finalize())
    };
    const SQL: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state, lease_until_ms, created_at_ms) VALUES ('acme', 'busy', $1, 'in_flight', $2, $2)";
    match app.store.database() {
        Database::Postgres(pool) => sqlx::query(SQL)
            .bind(&hash)
            .bind(lease)
            .execute(pool)
            .await
            .map(drop),
        Database::Sqlite(pool) => sqlx::query(SQL)
            .bind(&hash)
            .bind(lease)
            .execute(pool)
            .await
            .map(drop),
    }
    .expect("insert");
    let reply = app
        .client
        .post(app.url("/v1/mandates"))
        .bearer_auth(&alice)
        .header("Idempotency-Key", "busy")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status(), StatusCode::CONFLICT);
    assert_eq!(reply.headers()["retry-after"], "1");
    let problem: Value = reply.json().await.expect("json");
    assert_eq!(problem["code"], "request_in_progress");
    assert_eq!(events_in_log(&app).await, 0);
    app.stop().await;
}

/// A request that appended nothing (here refused: the cart is not at the version it
/// names) keeps its answer: its retry gets that answer, even once the cart reached that
/// version, and does not add the line.
async fn a_refusal_is_what_its_retry_gets_even_once_the_request_would_pass(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let cart = empty_cart(&app, &alice).await;
    let lines = format!("/v1/carts/{cart}/lines");
    let ahead = Some("\"2\"");
    let refused = app
        .send(
            Method::POST,
            &lines,
            Some(&alice),
            Some("ahead"),
            Some(&tent("sku:1")),
            ahead,
        )
        .await;
    refused.assert_problem(StatusCode::PRECONDITION_FAILED, "version_mismatch");
    // The cart reaches version 2.
    let other = app.post(&lines, &alice, tent("sku:2")).await;
    assert_eq!(other.etag(), "\"2\"", "{:?}", other.body);

    let retry = app
        .send(
            Method::POST,
            &lines,
            Some(&alice),
            Some("ahead"),
            Some(&tent("sku:1")),
            ahead,
        )
        .await;
    retry.assert_problem(StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let read = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(
        read.etag(),
        "\"2\"",
        "the retry added nothing: {:?}",
        read.body
    );
    app.stop().await;
}

/// Copies of one request sent at once: one is performed; each other copy is told the
/// request still runs or gets its answer, and nothing is done twice.
async fn copies_of_one_request_sent_at_once_are_performed_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let cart = empty_cart(&app, &alice).await;
    let lines = format!("/v1/carts/{cart}/lines");
    let line = tent("sku:1");
    let copies = (0..8).map(|_| {
        app.send(
            Method::POST,
            &lines,
            Some(&alice),
            Some("once"),
            Some(&line),
            None,
        )
    });
    let replies = futures::future::join_all(copies).await;
    let mut performed = Vec::new();
    for reply in &replies {
        match reply.status {
            StatusCode::OK => performed.push(&reply.body),
            _ => reply.assert_problem(StatusCode::CONFLICT, "request_in_progress"),
        }
    }
    assert!(!performed.is_empty(), "no copy was answered");
    assert!(
        performed.iter().all(|body| *body == performed[0]),
        "{performed:?}"
    );
    let read = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(
        read.etag(),
        "\"2\"",
        "the line was added once: {:?}",
        read.body
    );
    // And the stored answer is the one given.
    let retry = app
        .send(
            Method::POST,
            &lines,
            Some(&alice),
            Some("once"),
            Some(&line),
            None,
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(&retry.body, performed[0]);
    app.stop().await;
}

/// Holds `key` for the request asking `hash`, as a process that died while running it
/// left it: in flight, its lease run out.
async fn held_by_a_dead_process(app: &TestApp, key: &str, hash: &str) {
    let expired = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 1_000;
    const SQL: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state, lease_until_ms, created_at_ms) VALUES ('acme', $1, $2, 'in_flight', $3, $3)";
    shopagent_commands::on_pool!(app.store.database(), pool => sqlx::query(SQL)
        .bind(key)
        .bind(hash)
        .bind(expired)
        .execute(pool)
        .await
        .map(drop))
    .expect("insert");
}

/// A key left held by a request whose process died is taken over by the request's
/// retry: whether the first attempt had committed nothing (the retry does it all) or
/// everything (the retry answers what was done), the mandate is created once, and the
/// retry's answer is stored.
async fn a_key_held_by_a_request_whose_process_died_is_taken_over_by_its_retry(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let body = serde_json::to_vec(&mandate_terms()).expect("json");
    let hash = shopagent::idempotency::request_hash("POST", "/v1/mandates", &body);

    held_by_a_dead_process(&app, "nothing-done", &hash).await;
    let retry = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some("nothing-done"),
            Some(&mandate_terms()),
            None,
        )
        .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    assert_eq!(events_in_log(&app).await, 1);

    // The second request's mandate is created by its first attempt; its key stays held.
    let done = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some("all-done"),
            Some(&mandate_terms()),
            None,
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{:?}", done.body);
    // Once its answer is stored (behind the response), back to held by a dead process.
    const FORGET: &str =
        "DELETE FROM http_idempotency WHERE idempotency_key = 'all-done' AND state = 'done'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while shopagent_commands::on_pool!(app.store.database(), pool => sqlx::query(FORGET).execute(pool).await.map(|done| done.rows_affected()))
        .expect("delete")
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the answer was never stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    held_by_a_dead_process(&app, "all-done", &hash).await;
    let retry = app
        .send(
            Method::POST,
            "/v1/mandates",
            Some(&alice),
            Some("all-done"),
            Some(&mandate_terms()),
            None,
        )
        .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    assert_eq!(retry.body["id"], done.body["id"]);
    assert_eq!(events_in_log(&app).await, 2, "each mandate created once");

    for key in ["nothing-done", "all-done"] {
        let again = app
            .send(
                Method::POST,
                "/v1/mandates",
                Some(&alice),
                Some(key),
                Some(&mandate_terms()),
                None,
            )
            .await;
        assert_eq!(again.header("idempotent-replayed"), Some("true"), "{key}");
    }
    app.stop().await;
}

async fn a_stale_if_match_is_a_precondition_failure(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let id = create_mandate(&app, &alice, mandate_terms()).await;
    let path = format!("/v1/mandates/{id}/revoke");
    let body = json!({"reason": "lost phone"});
    let stale = app
        .send(
            Method::POST,
            &path,
            Some(&alice),
            Some("r1"),
            Some(&body),
            Some("\"0\""),
        )
        .await;
    stale.assert_problem(StatusCode::PRECONDITION_FAILED, "version_mismatch");
    let unchanged = app.get(&format!("/v1/mandates/{id}"), &alice).await;
    assert_eq!(
        (unchanged.etag().as_str(), &unchanged.body["revoked"]),
        ("\"1\"", &json!(false))
    );
    let garbage = app
        .send(
            Method::POST,
            &path,
            Some(&alice),
            Some("r2"),
            Some(&body),
            Some("yesterday"),
        )
        .await;
    garbage.assert_problem(StatusCode::BAD_REQUEST, "invalid_if_match");
    let current = app
        .send(
            Method::POST,
            &path,
            Some(&alice),
            Some("r3"),
            Some(&body),
            Some(&unchanged.etag()),
        )
        .await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(current.etag(), "\"2\"");
    assert_eq!(current.body["revoked"], true);
    app.stop().await;
}

async fn bad_input_is_a_clear_problem_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let cart_id = empty_cart(&app, &alice).await;
    let lines = format!("/v1/carts/{cart_id}/lines");
    let before = events_in_log(&app).await;
    let line = |quantity: Value, price: Value| json!({"offer_id": "sku:1", "merchant": "acme", "title": "Tent", "category": "outdoor", "unit_price": price, "quantity": quantity});

    let raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url(&lines))
            .bearer_auth(&alice)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request
    };
    let malformed = raw("{\"offer_id\": ", Some("application/json"))
        .send()
        .await
        .expect("send");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.json::<Value>().await.expect("json")["code"],
        "malformed_json"
    );
    let untyped = raw("{}", None).send().await.expect("send");
    assert_eq!(untyped.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let mut unknown_field = line(json!(1), usd(100));
    unknown_field["discount"] = json!(5);
    app.post(&lines, &alice, unknown_field)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    app.post(&lines, &alice, line(json!("two"), usd(100)))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    app.post(&lines, &alice, line(json!(-1), usd(100)))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    app.post(&lines, &alice, line(json!(2.5), usd(100)))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    app.post(&lines, &alice, line(json!(0), usd(100)))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "quantity_out_of_range");
    app.post(&lines, &alice, line(json!(1), usd(0)))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "price_not_positive");
    app.post(
        &lines,
        &alice,
        line(json!(1), json!({"minor": 100, "currency": "ZZZ"})),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.post(
        &lines,
        &alice,
        line(json!(1), json!({"minor": 100, "currency": "EUR"})),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch");
    app.post(
        &lines,
        &alice,
        line(json!(1), json!({"minor": 1e30, "currency": "USD"})),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let mut bad_merchant = line(json!(1), usd(100));
    bad_merchant["merchant"] = json!("ACME; DROP TABLE");
    app.post(&lines, &alice, bad_merchant)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let mut huge_title = line(json!(1), usd(100));
    huge_title["title"] = json!("x".repeat(300 * 1024));
    app.post(&lines, &alice, huge_title)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    app.post(
        "/v1/carts/not-a-uuid/lines",
        &alice,
        line(json!(1), usd(100)),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.get("/v1/carts/00000000-0000-0000-0000-000000000000", &alice)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.post(
        "/v1/mandates",
        &alice,
        json!({"mode": "autopilot", "currency": "USD", "per_order_limit": usd(-5)}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_mandate_terms");
    assert_eq!(
        events_in_log(&app).await,
        before,
        "no bad request changed anything"
    );
    app.stop().await;
}

async fn requests_without_a_valid_token_are_unauthorized(backend: Backend) {
    let app = spawn_app(backend).await;
    let none = app
        .send(
            Method::GET,
            "/v1/mandates/00000000-0000-0000-0000-000000000000",
            None,
            None,
            None,
            None,
        )
        .await;
    none.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let path = "/v1/mandates/00000000-0000-0000-0000-000000000000";
    app.get(path, "not.a.jwt")
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let foreign = shopagent::auth::Authenticator::new(Some(b"some-other-secret"), None);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |exp: i64, role: Role| shopagent::auth::Claims {
        sub: "alice".into(),
        tenant: "acme".into(),
        role,
        mandate: None,
        exp,
        iat: now,
    };
    let forged = foreign
        .issue(&claims(now + 600, Role::Shopper))
        .expect("token");
    app.get(path, &forged)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let expired = app
        .auth
        .issue(&claims(now - 3600, Role::Shopper))
        .expect("token");
    app.get(path, &expired)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let agent_without_mandate = app
        .auth
        .issue(&claims(now + 600, Role::Agent))
        .expect("token");
    app.get(path, &agent_without_mandate)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let post = app
        .send(
            Method::POST,
            "/v1/mandates",
            None,
            Some("k"),
            Some(&mandate_terms()),
            None,
        )
        .await;
    post.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(events_in_log(&app).await, 0);
    app.stop().await;
}

async fn a_quote_s_delivery_estimate_is_a_calendar_date(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let cart = ready_cart(&app, &alice, None, &[("acme", 1_000, "outdoor")]).await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let quote = json!({"merchant": "acme", "items_total": usd(1_000), "shipping": usd(100), "tax": usd(100), "delivery_estimate": "2026-12-04", "expires_at": expires});
    let recorded = app
        .post(&format!("/v1/carts/{cart}/quotes"), &alice, quote)
        .await;
    assert_eq!(recorded.status, StatusCode::OK, "{:?}", recorded.body);
    let read = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(read.body["quotes"][0]["delivery_estimate"], "2026-12-04");

    let ordinal = json!({"merchant": "acme", "items_total": usd(1_000), "shipping": usd(100), "tax": usd(100), "delivery_estimate": [2026, 338], "expires_at": expires});
    let refused = app
        .post(&format!("/v1/carts/{cart}/quotes"), &alice, ordinal)
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

async fn a_revocation_reason_is_counted_in_characters(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let id = create_mandate(&app, &alice, mandate_terms()).await;
    let path = format!("/v1/mandates/{id}/revoke");
    for refused in ["é".repeat(501), "  ".into(), "stop\u{7}".into()] {
        app.post(&path, &alice, json!({ "reason": refused }))
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    }
    // 500 characters, 1,000 bytes.
    let revoked = app
        .post(&path, &alice, json!({"reason": "é".repeat(500)}))
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);
    assert_eq!(revoked.body["revoked"], true);
    app.stop().await;
}

/// JSON Schema counts `2.0` an integer, and some encoders write every number so.
async fn a_whole_number_written_with_a_fraction_counts_as_an_integer(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let cart = app
        .post("/v1/carts", &alice, json!({"currency": "USD"}))
        .await;
    assert_eq!(cart.status, StatusCode::CREATED, "{:?}", cart.body);
    let id = cart.body["id"].as_str().expect("cart id");
    let line = json!({"offer_id": "sku:1", "merchant": "acme", "title": "Tent", "category": "outdoor", "unit_price": {"minor": 1500.0, "currency": "USD"}, "quantity": 2.0});
    let added = app
        .post(&format!("/v1/carts/{id}/lines"), &alice, line)
        .await;
    assert_eq!(added.status, StatusCode::OK, "{:?}", added.body);
    assert_eq!(added.body["lines"][0]["quantity"], 2);
    assert_eq!(added.body["lines"][0]["unit_price"]["minor"], 1500);
    app.stop().await;
}

async fn cart_changes_invalidate_quotes(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let cart = ready_cart(
        &app,
        &alice,
        None,
        &[("acme", 1_000, "outdoor"), ("bolt", 2_000, "bikes")],
    )
    .await;
    let read = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(read.body["quotes"].as_array().expect("quotes").len(), 2);
    let acme_line = read.body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["merchant"] == "acme")
        .expect("line")["line_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let changed = app
        .post(
            &format!("/v1/carts/{cart}/lines/{acme_line}/quantity"),
            &alice,
            json!({"quantity": 3}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    let quotes: Vec<&str> = changed.body["quotes"]
        .as_array()
        .expect("quotes")
        .iter()
        .map(|q| q["merchant"].as_str().expect("m"))
        .collect();
    assert_eq!(quotes, ["bolt"], "acme's quote no longer matches its lines");
    let removed = app
        .post(
            &format!("/v1/carts/{cart}/lines/{acme_line}/remove"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(removed.body["lines"].as_array().expect("lines").len(), 1);
    app.post(
        &format!("/v1/carts/{cart}/lines/{acme_line}/remove"),
        &alice,
        json!({}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unknown_line");
    app.stop().await;
}

fn outcome<'a>(reply: &'a Reply, merchant: &str) -> &'a Value {
    reply.body["sub_carts"]
        .as_array()
        .expect("sub_carts")
        .iter()
        .find(|s| s["merchant"] == merchant)
        .expect("merchant outcome")
}

async fn checkout_reserves_budget_per_merchant(backend: Backend) {
    let app = spawn_app(backend).await;
    register_merchants(&app, &["acme", "bolt"]).await;
    let alice = app.shopper("alice");
    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let agent = app.token("acme", "agent-7", Role::Agent, Some(&mandate));
    let cart = ready_cart(
        &app,
        &agent,
        None,
        &[("acme", 10_000, "outdoor"), ("bolt", 16_000, "bikes")],
    )
    .await;
    let reply = app
        .post(&format!("/v1/carts/{cart}/checkout"), &agent, json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["cart"]["status"], "checking_out");
    assert_eq!(outcome(&reply, "acme")["status"], "reserved");
    assert_eq!(outcome(&reply, "acme")["grand_total"], usd(10_200));
    assert_eq!(outcome(&reply, "bolt")["status"], "awaiting_approval");
    assert_eq!(outcome(&reply, "bolt")["code"], "approval_threshold");
    let read = app.get(&format!("/v1/mandates/{mandate}"), &alice).await;
    assert_eq!(
        read.body["open_reservations"]
            .as_array()
            .expect("reservations")
            .len(),
        2
    );

    // The shopper approves the waiting one; the agent may not.
    let waiting = outcome(&reply, "bolt")["reservation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let approve = format!("/v1/mandates/{mandate}/reservations/{waiting}/approve");
    app.post(&approve, &agent, json!({}))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let approved = app.post(&approve, &alice, json!({})).await;
    assert_eq!(approved.status, StatusCode::OK);
    assert!(
        approved.body["open_reservations"]
            .as_array()
            .expect("r")
            .iter()
            .all(|r| r["awaiting_approval"] == false)
    );

    // A locked cart refuses changes, and a second checkout.
    app.post(&format!("/v1/carts/{cart}/checkout"), &agent, json!({}))
        .await
        .assert_problem(StatusCode::CONFLICT, "cart_locked");
    app.stop().await;
}

async fn checkout_reports_what_the_mandate_refuses(backend: Backend) {
    let app = spawn_app(backend).await;
    register_merchants(&app, &["acme", "vino", "big"]).await;
    let alice = app.shopper("alice");
    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let cart = ready_cart(
        &app,
        &alice,
        Some(&mandate),
        &[
            ("acme", 1_000, "outdoor"),
            ("vino", 2_000, "alcohol"),
            ("big", 25_000, "tv"),
        ],
    )
    .await;
    let reply = app
        .post(&format!("/v1/carts/{cart}/checkout"), &alice, json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(outcome(&reply, "acme")["status"], "reserved");
    assert_eq!(outcome(&reply, "vino")["status"], "refused");
    assert_eq!(outcome(&reply, "vino")["code"], "category_blocked");
    assert_eq!(outcome(&reply, "big")["code"], "over_per_order_limit");
    assert!(
        outcome(&reply, "big")["reason"]
            .as_str()
            .expect("reason")
            .contains("per-order limit")
    );

    // Without a mandate the shopper buys: a hand-off, no reservation.
    let own = ready_cart(&app, &alice, None, &[("acme", 1_000, "outdoor")]).await;
    let reply = app
        .post(&format!("/v1/carts/{own}/checkout"), &alice, json!({}))
        .await;
    assert_eq!(outcome(&reply, "acme")["status"], "handoff");
    app.stop().await;
}

async fn fifty_concurrent_checkouts_never_exceed_the_budget(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    register_merchants(&app, &["acme"]).await;
    let alice = app.shopper("alice");
    let terms = json!({"mode": "autopilot", "currency": "USD", "period_budget": {"period": "month", "limit": usd(10_000)}, "price_drift_tolerance_bps": 0});
    let mandate = create_mandate(&app, &alice, terms).await;
    let agent = app.token("acme", "agent-7", Role::Agent, Some(&mandate));
    let mut carts = Vec::new();
    for _ in 0..50 {
        // 800 + 100 shipping + 100 tax: the budget covers exactly ten.
        carts.push(ready_cart(&app, &agent, None, &[("acme", 800, "outdoor")]).await);
    }
    let checkouts: Vec<_> = carts
        .into_iter()
        .map(|cart| {
            let (app, agent) = (app.clone(), agent.clone());
            tokio::spawn(async move {
                app.post(&format!("/v1/carts/{cart}/checkout"), &agent, json!({}))
                    .await
            })
        })
        .collect();
    let (mut reserved, mut refused) = (0, 0);
    for checkout in checkouts {
        let reply = checkout.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let acme = outcome(&reply, "acme");
        match acme["status"].as_str() {
            Some("reserved") => reserved += 1,
            Some("refused") => {
                assert_eq!(acme["code"], "over_period_budget", "{acme:?}");
                refused += 1;
            }
            other => panic!("unexpected outcome {other:?}: {acme:?}"),
        }
    }
    assert_eq!((reserved, refused), (10, 40));
    let read = app.get(&format!("/v1/mandates/{mandate}"), &alice).await;
    let held: i64 = read.body["open_reservations"]
        .as_array()
        .expect("r")
        .iter()
        .map(|r| r["amount"]["minor"].as_i64().expect("minor"))
        .sum();
    assert_eq!(held, 10_000, "the budget is used exactly, never exceeded");
    std::sync::Arc::into_inner(app)
        .expect("sole owner")
        .stop()
        .await;
}

async fn runs_keep_an_append_only_ledger_with_approvals(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let agent = app.token("acme", "agent-7", Role::Agent, Some(&mandate));
    let run = app
        .post(
            "/v1/runs",
            &agent,
            json!({"prompt": "a 2-person tent under $150"}),
        )
        .await;
    assert_eq!(run.status, StatusCode::CREATED, "{:?}", run.body);
    assert_eq!(
        (run.body["mode"].as_str(), run.body["shopper"].as_str()),
        (Some("autopilot"), Some("alice"))
    );
    let path = format!("/v1/runs/{}", run.body["id"].as_str().expect("id"));
    let action = json!({"kind": "search", "input_digest": "a".repeat(64), "output_digest": "b".repeat(64), "citations": ["https://acme.example/tents"], "latency_ms": 420, "cost": usd(3)});
    assert_eq!(
        app.post(&format!("{path}/actions"), &agent, action.clone())
            .await
            .status,
        StatusCode::OK
    );
    let mut bad = action.clone();
    bad["citations"] = json!(["javascript:alert(1)"]);
    app.post(&format!("{path}/actions"), &agent, bad)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let decision = json!({"rule": "per_order_limit", "outcome": "allowed", "rationale": "$149 is within the $200 limit"});
    assert_eq!(
        app.post(&format!("{path}/guardrail-decisions"), &agent, decision)
            .await
            .status,
        StatusCode::OK
    );
    let requested = app.post(&format!("{path}/approvals"), &agent, json!({"subject": "buy tent for $149", "amount": usd(14_900), "expires_in_seconds": 600})).await;
    let approval = requested.body["created_id"]
        .as_str()
        .expect("approval id")
        .to_owned();
    assert_eq!(requested.body["pending_approvals"], json!([approval]));
    app.post(
        &format!("{path}/approvals/{approval}/grant"),
        &agent,
        json!({}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        app.post(
            &format!("{path}/approvals/{approval}/grant"),
            &alice,
            json!({})
        )
        .await
        .status,
        StatusCode::OK
    );
    let done = app
        .post(
            &format!("{path}/complete"),
            &agent,
            json!({"summary": "bought the tent"}),
        )
        .await;
    assert_eq!(done.body["status"], "completed");
    app.post(&format!("{path}/actions"), &agent, action)
        .await
        .assert_problem(StatusCode::CONFLICT, "run_ended");

    let ledger = app
        .get(
            &format!("{path}/ledger"),
            &app.token("acme", "auditor-1", Role::Auditor, None),
        )
        .await;
    let types: Vec<&str> = ledger
        .body
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["entry_type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "RunStarted",
            "RunActionRecorded",
            "GuardrailDecisionRecorded",
            "ApprovalRequested",
            "ApprovalGranted",
            "RunCompleted"
        ]
    );
    app.stop().await;
}

async fn run_entries_stream_as_server_sent_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.shopper("alice");
    let run = app
        .post("/v1/runs", &alice, json!({"prompt": "socks"}))
        .await;
    let path = format!("/v1/runs/{}", run.body["id"].as_str().expect("id"));
    let response = app
        .client
        .get(app.url(&format!("{path}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("sse");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response;
    let action = json!({"kind": "search", "input_digest": "a".repeat(64), "output_digest": "b".repeat(64), "latency_ms": 5});
    assert_eq!(
        app.post(&format!("{path}/actions"), &alice, action)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post(
            &format!("{path}/cancel"),
            &alice,
            json!({"reason": "found them elsewhere"})
        )
        .await
        .status,
        StatusCode::OK
    );
    let mut text = String::new();
    let read_all = async {
        while let Some(chunk) = body.chunk().await.expect("chunk") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read_all)
        .await
        .expect("the stream ends with the run");
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events, ["RunStarted", "RunActionRecorded", "RunCancelled"]);
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);

    // Resuming after entry 2 delivers only what follows.
    let resumed = app
        .client
        .get(app.url(&format!("{path}/events")))
        .bearer_auth(&alice)
        .header("Last-Event-ID", "2")
        .send()
        .await
        .expect("sse");
    let rest = tokio::time::timeout(std::time::Duration::from_secs(20), resumed.text())
        .await
        .expect("ends")
        .expect("text");
    assert_eq!(
        rest.lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect::<Vec<_>>(),
        ["RunCancelled"]
    );
    app.stop().await;
}

async fn oidc_tokens_are_verified_against_the_jwks(backend: Backend) {
    let jwks: Value =
        serde_json::from_str(include_str!("fixtures/oidc-test-jwks.json")).expect("jwks");
    let provider = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || async move { axum::Json(jwks) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jwks_url = format!("http://{}/jwks", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, provider).await });
    let app = spawn_app_with(backend, Some(jwks_url)).await;

    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("fixtures/oidc-test-key.pem"))
        .expect("key");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims =
        json!({"sub": "alice", "tenant": "acme", "role": "shopper", "exp": now + 600, "iat": now});
    let sign = |kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let created = app
        .post("/v1/mandates", &sign("test-key-1"), mandate_terms())
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["shopper"], "alice");
    app.get(
        "/v1/mandates/00000000-0000-0000-0000-000000000000",
        &sign("unknown-key"),
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    app.stop().await;
}

async fn checkout_creates_one_order_per_proceeding_merchant(backend: Backend) {
    let app = spawn_app(backend).await;
    register_merchants(&app, &["acme", "vino"]).await;
    let alice = app.shopper("alice");
    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let cart = ready_cart(
        &app,
        &alice,
        Some(&mandate),
        &[("acme", 1_000, "outdoor"), ("vino", 2_000, "alcohol")],
    )
    .await;
    let reply = app
        .post(&format!("/v1/carts/{cart}/checkout"), &alice, json!({}))
        .await;
    assert!(
        outcome(&reply, "vino")["order_id"].is_null(),
        "a refused sub-cart gets no order"
    );
    let order_id = outcome(&reply, "acme")["order_id"]
        .as_str()
        .expect("order")
        .to_owned();
    let path = format!("/v1/orders/{order_id}");
    let order = app.get(&path, &alice).await;
    assert_eq!(order.status, StatusCode::OK, "{:?}", order.body);
    assert_eq!(order.body["path"], "api");
    assert_eq!(
        order.body["path_reason"],
        "acme store has a UCP API and is healthy"
    );
    assert_eq!(order.body["status"], "created");
    assert_eq!(order.body["total"], usd(1_200));
    assert_eq!(order.body["lines"][0]["unit_price"], usd(1_000));

    app.get(&path, &app.shopper("bob"))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let finance = app.token("acme", "fin-1", Role::Finance, None);
    assert_eq!(app.get(&path, &finance).await.status, StatusCode::OK);
    app.post(&format!("{path}/cancel"), &finance, json!({"reason": "x"}))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.post(
        &format!("{path}/returns"),
        &alice,
        json!({"reason": "too small"}),
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "illegal_order_transition");
    let cancelled = app
        .post(
            &format!("{path}/cancel"),
            &alice,
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.body["status"], "cancelled");
    app.post(
        &format!("{path}/cancel"),
        &alice,
        json!({"reason": "again"}),
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "illegal_order_transition");

    // Without an autopilot mandate the order is a deep-link hand-off.
    let own = ready_cart(&app, &alice, None, &[("acme", 500, "outdoor")]).await;
    let reply = app
        .post(&format!("/v1/carts/{own}/checkout"), &alice, json!({}))
        .await;
    let handoff = outcome(&reply, "acme")["order_id"]
        .as_str()
        .expect("order")
        .to_owned();
    assert_eq!(
        app.get(&format!("/v1/orders/{handoff}"), &alice).await.body["path"],
        "deeplink"
    );
    // The shopper gets the merchant's checkout with the items and our reference.
    assert_eq!(
        outcome(&reply, "acme")["deeplink"],
        format!("https://acme.example/p/?item=sku%3Aitem%3A1&ref={handoff}")
    );

    // Payments are read-only and appear with checkout orchestration; none exist yet.
    app.get(&format!("/v1/payments/{order_id}"), &alice)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

async fn a_drifted_price_waits_for_the_shopper(backend: Backend) {
    let app = spawn_app(backend).await;
    register_merchants(&app, &["acme"]).await;
    let alice = app.shopper("alice");
    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let cart = ready_cart(&app, &alice, Some(&mandate), &[("acme", 1_000, "outdoor")]).await;
    // The merchant now wants 10 % more than the price seen; the tolerance is 3 %.
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let requote = json!({"merchant": "acme", "items_total": usd(1_100), "shipping": usd(100), "tax": usd(100), "expires_at": expires});
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/quotes"), &alice, requote)
            .await
            .status,
        StatusCode::OK
    );
    let reply = app
        .post(&format!("/v1/carts/{cart}/checkout"), &alice, json!({}))
        .await;
    let acme = outcome(&reply, "acme");
    assert_eq!(acme["status"], "awaiting_approval", "{acme:?}");
    assert_eq!(acme["code"], "price_drift");
    assert!(
        acme["reason"]
            .as_str()
            .expect("reason")
            .contains("1000 basis points")
    );
    assert!(
        acme["order_id"].is_null(),
        "no order before the shopper decides"
    );
    let reservation = acme["reservation_id"].as_str().expect("held").to_owned();
    let approved = app
        .post(
            &format!("/v1/mandates/{mandate}/reservations/{reservation}/approve"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK);
    assert_eq!(
        approved.body["open_reservations"][0]["awaiting_approval"],
        false
    );
    app.stop().await;
}

async fn checkout_follows_the_capability_registry(backend: Backend) {
    let app = spawn_app(backend).await;
    register_merchants(&app, &["acme", "bolt"]).await;
    let alice = app.shopper("alice");
    let ops = app.token("acme", "ops-1", Role::Ops, None);
    // Everyone reads the registry; only ops and admins change it.
    let read = app.get("/v1/merchants/acme", &alice).await;
    assert_eq!(
        (read.status, read.body["paths"].clone()),
        (StatusCode::OK, json!(["api", "deeplink"]))
    );
    app.post(
        "/v1/merchants/acme/health",
        &alice,
        json!({"health": "down", "reason": "x"}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.post(
        "/v1/merchants",
        &ops,
        json!({"merchant_id": "nope", "name": "N", "paths": ["api"]}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_merchant_profile");
    app.get("/v1/merchants/Not-A-Slug", &alice)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let down = app
        .post(
            "/v1/merchants/bolt/health",
            &ops,
            json!({"health": "down", "reason": "circuit open"}),
        )
        .await;
    assert_eq!(down.body["health"], "down");

    let mandate = create_mandate(&app, &alice, mandate_terms()).await;
    let cart = ready_cart(
        &app,
        &alice,
        Some(&mandate),
        &[
            ("acme", 1_000, "outdoor"),
            ("bolt", 1_000, "bikes"),
            ("corner-shop", 1_000, "food"),
        ],
    )
    .await;
    let reply = app
        .post(&format!("/v1/carts/{cart}/checkout"), &alice, json!({}))
        .await;
    assert_eq!(outcome(&reply, "acme")["status"], "reserved");
    for (merchant, why) in [
        ("bolt", "its API is down"),
        ("corner-shop", "not in the capability registry"),
    ] {
        let sub_cart = outcome(&reply, merchant);
        assert_eq!(sub_cart["status"], "handoff", "{sub_cart:?}");
        assert!(
            sub_cart["reservation_id"].is_null(),
            "a hand-off holds no budget"
        );
        let order = app
            .get(
                &format!(
                    "/v1/orders/{}",
                    sub_cart["order_id"].as_str().expect("order")
                ),
                &alice,
            )
            .await;
        assert_eq!(order.body["path"], "deeplink");
        assert!(
            order.body["path_reason"]
                .as_str()
                .expect("reason")
                .contains(why),
            "{:?}",
            order.body["path_reason"]
        );
    }
    let held = app.get(&format!("/v1/mandates/{mandate}"), &alice).await;
    assert_eq!(
        held.body["open_reservations"].as_array().expect("r").len(),
        1
    );
    app.stop().await;
}

/// Polls `GET /v1/orders` until it lists `count` orders (the hub is a projection).
async fn orders_page(app: &TestApp, token: &str, query: &str, count: usize) -> Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = app.get(&format!("/v1/orders{query}"), token).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        if reply.body["orders"].as_array().expect("orders").len() >= count
            || std::time::Instant::now() > deadline
        {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn the_orders_hub_lists_each_caller_s_orders_newest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    register_merchants(&app, &["acme", "bolt"]).await;
    let alice = app.shopper("alice");
    let first = ready_cart(&app, &alice, None, &[("acme", 1_000, "outdoor")]).await;
    app.post(&format!("/v1/carts/{first}/checkout"), &alice, json!({}))
        .await;
    let second = ready_cart(
        &app,
        &alice,
        None,
        &[("bolt", 2_000, "bikes"), ("acme", 500, "outdoor")],
    )
    .await;
    let checkout = app
        .post(&format!("/v1/carts/{second}/checkout"), &alice, json!({}))
        .await;
    let bolt_order = outcome(&checkout, "bolt")["order_id"]
        .as_str()
        .expect("order")
        .to_owned();

    let page = orders_page(&app, &alice, "", 3).await;
    let orders = page.body["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 3);
    let created: Vec<&str> = orders
        .iter()
        .map(|o| o["created_at"].as_str().expect("created"))
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    assert!(
        orders
            .iter()
            .all(|o| o["path"] == "deeplink" && o["status"] == "created")
    );
    assert_eq!(
        orders
            .iter()
            .find(|o| o["order_id"] == bolt_order.as_str())
            .expect("bolt")["total"],
        usd(2_200)
    );

    // Filters and pages.
    let acme = orders_page(&app, &alice, "?merchant=acme", 2).await;
    assert_eq!(acme.body["orders"].as_array().expect("orders").len(), 2);
    let one = app.get("/v1/orders?limit=1", &alice).await;
    let cursor = one.body["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let rest = app
        .get(&format!("/v1/orders?limit=5&cursor={cursor}"), &alice)
        .await;
    assert_eq!(rest.body["orders"].as_array().expect("orders").len(), 2);
    assert!(rest.body["next_cursor"].is_null());
    assert_ne!(
        one.body["orders"][0]["order_id"],
        rest.body["orders"][0]["order_id"]
    );

    // A cancellation reaches the hub's status and timeline.
    app.post(
        &format!("/v1/orders/{bolt_order}/cancel"),
        &alice,
        json!({"reason": "changed my mind"}),
    )
    .await;
    let cancelled = orders_page(&app, &alice, "?status=cancelled", 1).await;
    let bolt = &cancelled.body["orders"][0];
    assert_eq!(bolt["order_id"], bolt_order.as_str());
    let events: Vec<&str> = bolt["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(events, ["created", "cancelled"]);

    // Each caller sees their own; readers see the tenant; bad filters are 4xx.
    assert!(
        app.get("/v1/orders", &app.shopper("bob")).await.body["orders"]
            .as_array()
            .expect("orders")
            .is_empty()
    );
    let finance = app.token("acme", "fin", Role::Finance, None);
    assert_eq!(
        orders_page(&app, &finance, "", 3).await.body["orders"]
            .as_array()
            .expect("orders")
            .len(),
        3
    );
    app.get("/v1/orders?status=lost", &alice)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.get("/v1/orders?limit=0", &alice)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.get("/v1/orders?cursor=zz", &alice)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid_cursor");
    app.get("/v1/orders?sort=price", &alice)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid_query");
    app.stop().await;
}
