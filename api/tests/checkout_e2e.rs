//! Checkout end to end over HTTP: an autopilot agent checks out a cart; the process
//! manager gets a card from the sandbox issuer (Stripe Issuing shapes) and places the
//! order with the sandbox UCP merchant; the order, the mandate and the orders hub show
//! the outcome. One run per failure mode too.

mod common;

use std::time::{Duration, Instant};

use common::checkout::{
    World, agent_cart, cart_ready_to_check_out, check_out, mandate_settles, settled_order, usd,
    world, world_configured,
};
use common::{Backend, Reply, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shopagent::auth::Role;
use shopagent_connectors::Sandbox;
use shopagent_connectors::sandbox_issuer::SandboxIssuer;
use shopagent_connectors::sandbox_merchant::{FailureMode, SandboxMerchant};

on_both_backends!(
    an_autopilot_order_is_placed_over_ucp_with_a_virtual_card,
    a_declined_payment_voids_the_card_and_releases_the_budget,
    an_out_of_stock_item_fails_the_order_with_its_reason,
    merchant_order_events_carry_the_order_through_delivery_return_and_refund,
    a_merchant_event_must_be_signed_by_the_merchant_and_recent,
    a_merchant_event_about_an_order_placed_here_needs_no_orders_hub,
    a_merchant_event_sent_before_its_placement_answer_is_taken_at_once,
    a_shipped_parcel_is_tracked_and_the_carrier_reports_delivery,
    a_charge_from_another_acceptor_is_declined_by_the_payment_rules,
    the_merchant_prices_its_part_of_the_cart,
    each_failure_mode_ends_typed_with_nothing_left_half_done,
    a_failure_at_one_merchant_leaves_the_other_order_intact,
    autopilot_checkouts_wait_while_the_purchases_behind_them_are_late,
);

async fn an_autopilot_order_is_placed_over_ucp_with_a_virtual_card(backend: Backend) {
    let World {
        app,
        issuer,
        merchant,
        ..
    } = world(backend, FailureMode::None).await;
    let (mandate, order) = check_out(&app).await;
    let placed = settled_order(&app, &order).await;
    assert_eq!(placed.body["status"], "placed", "{:?}", placed.body);
    assert_eq!(placed.body["merchant_reference"], "ord_1");
    assert_eq!(merchant.orders(), ["ord_1"]);
    assert_eq!(issuer.cards_issued(), 1);
    // The merchant charged the card; shopagent approved the authorization.
    let payment = placed.body["payment_id"].as_str().expect("payment id");
    let payment = app
        .get(&format!("/v1/payments/{payment}"), &app.shopper("alice"))
        .await;
    assert_eq!(payment.body["status"], "authorized", "{:?}", payment.body);
    let authorizations = issuer.authorizations();
    assert_eq!(authorizations.len(), 1);
    assert_eq!(authorizations[0]["approved"], true);
    assert_eq!(
        authorizations[0]["amount"], 11_300,
        "items, shipping and tax"
    );
    let settled = mandate_settles(&app, &mandate).await;
    assert_eq!(
        settled.body["spent_this_period"],
        usd(11_300),
        "the spend is committed"
    );
    app.stop().await;
}

async fn a_declined_payment_voids_the_card_and_releases_the_budget(backend: Backend) {
    let World {
        app,
        issuer,
        merchant,
        ..
    } = world(backend, FailureMode::PaymentDeclined).await;
    let (mandate, order) = check_out(&app).await;
    let failed = settled_order(&app, &order).await;
    assert_eq!(failed.body["status"], "failed", "{:?}", failed.body);
    assert!(merchant.orders().is_empty());
    let settled = mandate_settles(&app, &mandate).await;
    assert_eq!(
        settled.body["spent_this_period"],
        usd(0),
        "nothing spent, reservation released"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let canceled = loop {
        let canceled = issuer.cards_issued() == 1 && issuer_cards_canceled(&issuer);
        if canceled || Instant::now() > deadline {
            break canceled;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(canceled, "the virtual card is canceled at the issuer");
    app.stop().await;
}

fn issuer_cards_canceled(issuer: &SandboxIssuer) -> bool {
    issuer.card_ids().iter().all(|id| {
        issuer
            .card(id)
            .is_some_and(|card| card["status"] == "canceled")
    })
}

async fn an_out_of_stock_item_fails_the_order_with_its_reason(backend: Backend) {
    let World { app, .. } = world(backend, FailureMode::OutOfStock).await;
    let (mandate, order) = check_out(&app).await;
    let failed = settled_order(&app, &order).await;
    assert_eq!(failed.body["status"], "failed");
    let hub = app
        .get("/v1/orders?status=failed", &app.shopper("alice"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut hub = hub;
    while hub.body["orders"].as_array().is_none_or(Vec::is_empty) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub = app
            .get("/v1/orders?status=failed", &app.shopper("alice"))
            .await;
    }
    let timeline = hub.body["orders"][0]["timeline"]
        .as_array()
        .expect("timeline")
        .clone();
    let failure = timeline
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("failure in the timeline");
    assert_eq!(failure["reason"], "inventory_changed");
    assert!(
        mandate_settles(&app, &mandate).await.body["open_reservations"]
            .as_array()
            .expect("r")
            .is_empty()
    );
    app.stop().await;
}

/// Polls the order until `done` holds (or 30 s pass); returns the last reply.
async fn order_until(app: &TestApp, order: &str, done: impl Fn(&Value) -> bool) -> Reply {
    let alice = app.shopper("alice");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get(&format!("/v1/orders/{order}"), &alice).await;
        if done(&reply.body) || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks out with the merchant's webhooks delivered, and waits until its "order
/// created" event has confirmed the order: the order's id and state.
async fn checked_out_and_confirmed(app: &TestApp, merchant: &SandboxMerchant) -> (String, Reply) {
    merchant.deliver_webhooks_to(app.url("/v1/webhooks/ucp/acme/acme"));
    let (_, order) = check_out(app).await;
    let confirmed = order_until(app, &order, |o| o["status"] == "confirmed").await;
    assert_eq!(
        confirmed.body["status"], "confirmed",
        "{:?}",
        confirmed.body
    );
    (order, confirmed)
}

async fn merchant_order_events_carry_the_order_through_delivery_return_and_refund(
    backend: Backend,
) {
    let World { app, merchant, .. } = world(backend, FailureMode::None).await;
    let (order, _) = checked_out_and_confirmed(&app, &merchant).await;

    merchant
        .ship("ord_1", "UPS", "1Z999AA10123456784")
        .expect("ship");
    let shipped = order_until(&app, &order, |o| o["status"] == "shipped").await;
    assert_eq!(
        shipped.body["tracking"],
        json!({"carrier": "UPS", "tracking_number": "1Z999AA10123456784"}),
        "{:?}",
        shipped.body
    );
    merchant.deliver("ord_1").expect("deliver");
    let delivered = order_until(&app, &order, |o| o["status"] == "delivered").await;
    assert_eq!(
        delivered.body["status"], "delivered",
        "{:?}",
        delivered.body
    );

    // The shopper asks for a return; the merchant accepts it, receives it, refunds.
    let alice = app.shopper("alice");
    let requested = app
        .post(
            &format!("/v1/orders/{order}/returns"),
            &alice,
            json!({"reason": "too small"}),
        )
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{:?}", requested.body);
    let rma = merchant.accept_return("ord_1").expect("accept");
    let accepted = order_until(&app, &order, |o| o["returns"][0]["status"] == "rma_issued").await;
    assert_eq!(accepted.body["returns"][0]["rma"], json!(rma));
    merchant.receive_return("ord_1", &rma).expect("receive");
    order_until(&app, &order, |o| o["returns"][0]["status"] == "returned").await;
    merchant.refund("ord_1", 11_300).expect("refund");
    let refunded = order_until(&app, &order, |o| o["refunded"] == usd(11_300)).await;
    assert_eq!(
        refunded.body["refunded"],
        usd(11_300),
        "{:?}",
        refunded.body
    );
    assert_eq!(refunded.body["returns"].as_array().map(Vec::len), Some(1));

    // The merchant captured the card when it shipped and refunded it with the order:
    // finance sees the order matched, the day's money in, and no exception.
    let finance = app.token("acme", "finance-1", Role::Finance, None);
    let today = time::OffsetDateTime::now_utc().date();
    let daily_url = format!("/v1/reconciliation/daily?date={today}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let daily = loop {
        let daily = app.get(&daily_url, &finance).await;
        // Each projection catches up on its own: wait for both refunds to reach this one.
        let totals = &daily.body["totals"][0];
        let settled =
            totals["refunded_minor"] == 11_300 && totals["merchant_refunded_minor"] == 11_300;
        if settled || Instant::now() > deadline {
            break daily;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        daily.body["totals"],
        json!([{"currency": "USD", "orders": 1, "captured_minor": 11_300, "refunded_minor": 11_300,
                "merchant_refunded_minor": 11_300, "net_minor": 0, "exceptions": 0}]),
        "{:?}",
        daily.body
    );
    let exceptions = app.get("/v1/reconciliation/exceptions", &finance).await;
    assert_eq!(exceptions.status, StatusCode::OK);
    assert_eq!(exceptions.body["exceptions"], json!([]));
    let refused = app.get(&daily_url, &alice).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Every delivery was acknowledged; redelivering the last one changes nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while merchant.webhooks_acknowledged() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(merchant.webhooks_acknowledged(), 6);
    let version = refunded.body["version"].clone();
    merchant.receive_return("ord_1", &rma).expect("resend");
    while merchant.webhooks_acknowledged() < 7 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = app.get(&format!("/v1/orders/{order}"), &alice).await;
    assert_eq!(
        after.body["version"], version,
        "a repeated event appends nothing"
    );
    app.stop().await;
}

/// A merchant's first events about an order come moments after the placement, often
/// before the orders hub has caught up with it: the instance that placed the order
/// knows it by the merchant's reference without the hub.
async fn a_merchant_event_about_an_order_placed_here_needs_no_orders_hub(backend: Backend) {
    use shopagent_projections::{OutsideReference, find_order};
    let World { app, merchant, .. } = world(backend, FailureMode::None).await;
    let ops = app.token("acme", "ops", Role::Ops, None);
    let hub = "/v1/ops/projections/orders_hub";
    let paused = app.post(&format!("{hub}/pause"), &ops, json!({})).await;
    assert_eq!(paused.status, StatusCode::OK, "{:?}", paused.body);
    let (order, confirmed) = checked_out_and_confirmed(&app, &merchant).await;
    let reference = confirmed.body["merchant_reference"]
        .as_str()
        .expect("the merchant's reference")
        .to_owned();
    let by = OutsideReference::Merchant {
        merchant: "acme",
        reference: &reference,
    };
    let in_hub = || find_order(app.store.database(), "acme", by);
    assert_eq!(
        in_hub().await.expect("the hub"),
        None,
        "the hub never saw it"
    );

    // Resumed, the hub names the same order.
    let resumed = app.post(&format!("{hub}/resume"), &ops, json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{:?}", resumed.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let found = in_hub().await.expect("the hub");
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(found, Some((order, "USD".to_owned())));
    app.stop().await;
}

async fn a_merchant_event_sent_before_its_placement_answer_is_taken_at_once(backend: Backend) {
    let World { app, merchant, .. } = world(backend, FailureMode::None).await;
    // The order's first event reaches the server while the process still waits for the
    // merchant's answer to the placement: neither it nor the orders hub knows the
    // merchant's reference yet.
    merchant.answer_completions_after(Duration::from_millis(500));
    let (_, confirmed) = checked_out_and_confirmed(&app, &merchant).await;
    assert_eq!(confirmed.body["merchant_reference"], "ord_1");
    assert_eq!(merchant.webhooks_acknowledged(), 1);
    assert_eq!(
        merchant.webhook_attempts_not_acknowledged(),
        0,
        "the event waited for the placement under way, and was not refused"
    );
    app.stop().await;
}

async fn a_merchant_event_must_be_signed_by_the_merchant_and_recent(backend: Backend) {
    use shopagent_connectors::ucp::webhook::WebhookSigner;
    let World { app, merchant, .. } = world(backend, FailureMode::None).await;
    let (_, order) = check_out(&app).await;
    let placed = settled_order(&app, &order).await;
    assert_eq!(placed.body["status"], "placed");
    merchant.ship("ord_1", "UPS", "1Z1").expect("ship");
    let mut event = merchant.order("ord_1").expect("entity");
    event["event_id"] = json!("evt_test_1");
    event["created_time"] = json!("2026-11-25T10:00:00Z");
    let body = event.to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let url = app.url("/v1/webhooks/ucp/acme/acme");
    let deliver = |body: String, signature: Option<String>| {
        let request = app
            .client
            .post(&url)
            .header("content-type", "application/json");
        let request = match signature {
            Some(signature) => request.header("request-signature", signature),
            None => request,
        };
        async move {
            let response = request.body(body).send().await.expect("delivered");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let impostor = WebhookSigner::generate(
        merchant.signing_key().kid, // the right key id, the wrong key
    );
    let tampered = body.replace("1Z1", "1Z2");
    for (what, body, signature) in [
        (
            "tampered body",
            tampered.clone(),
            Some(merchant.sign_webhook(body.as_bytes(), now)),
        ),
        (
            "another key",
            body.clone(),
            impostor.sign(body.as_bytes(), now).ok(),
        ),
        (
            "stale",
            body.clone(),
            Some(merchant.sign_webhook(body.as_bytes(), now - 360)),
        ),
        (
            "from the future",
            body.clone(),
            Some(merchant.sign_webhook(body.as_bytes(), now + 360)),
        ),
        ("unsigned", body.clone(), None),
        ("garbage", body.clone(), Some("not.a.jws".into())),
    ] {
        let (status, problem) = deliver(body, signature).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {problem:?}");
        assert_eq!(problem["code"], "invalid_signature", "{what}");
    }
    let unchanged = app
        .get(&format!("/v1/orders/{order}"), &app.shopper("alice"))
        .await;
    assert_eq!(unchanged.body["status"], "placed", "nothing stored");
    assert_eq!(unchanged.body["version"], placed.body["version"]);

    // Signed and recent: applied; the same delivery again changes nothing.
    let signed = || Some(merchant.sign_webhook(body.as_bytes(), now));
    // Like a merchant, retry while the orders hub has not caught up with the placement.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, answer) = loop {
        let (status, answer) = deliver(body.clone(), signed()).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer["ucp"]["version"], "2026-01-11");
    let shipped = app
        .get(&format!("/v1/orders/{order}"), &app.shopper("alice"))
        .await;
    assert_eq!(shipped.body["status"], "shipped");
    let (status, _) = deliver(body.clone(), signed()).await;
    assert_eq!(status, StatusCode::OK);
    let again = app
        .get(&format!("/v1/orders/{order}"), &app.shopper("alice"))
        .await;
    assert_eq!(
        again.body["version"], shipped.body["version"],
        "a duplicate has no effect"
    );

    // Signed by the merchant, sent to `path`.
    let signed_to = |path: &str, body: String| {
        let request = app
            .client
            .post(app.url(path))
            .header(
                "request-signature",
                merchant.sign_webhook(body.as_bytes(), now),
            )
            .body(body);
        async move { request.send().await.expect("sent") }
    };
    // An order shopagent does not know (yet): try again later.
    let mut unknown = event.clone();
    unknown["id"] = json!("ord_999");
    let response = signed_to("/v1/webhooks/ucp/acme/acme", unknown.to_string()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    // A malformed tenant has no webhook, nor has a merchant that is not registered.
    for path in [
        "/v1/webhooks/ucp/no%20such%2Ftenant/acme",
        "/v1/webhooks/ucp/acme/nobody",
    ] {
        let response = signed_to(path, body.clone()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    app.stop().await;
}

async fn a_shipped_parcel_is_tracked_and_the_carrier_reports_delivery(backend: Backend) {
    let World {
        app,
        merchant,
        carrier,
        ..
    } = world(backend, FailureMode::None).await;
    merchant.deliver_webhooks_to(app.url("/v1/webhooks/ucp/acme/acme"));
    let (_, order) = check_out(&app).await;
    order_until(&app, &order, |o| o["status"] == "confirmed").await;
    let parcel = "9400111899223344556677";
    merchant.ship("ord_1", "USPS", parcel).expect("ship");
    order_until(&app, &order, |o| o["status"] == "shipped").await;
    // The tracking process registers the parcel with the carrier.
    let deadline = Instant::now() + Duration::from_secs(30);
    while carrier.tracked().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(carrier.tracked(), [parcel]);

    // A forged tracking event is refused and changes nothing.
    let forged = json!({"id": "evt_forged", "object": "Event", "description": "tracker.updated",
        "updated_at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("time"),
        "result": {"id": "trk_x", "object": "Tracker", "tracking_code": parcel, "status": "delivered"}})
    .to_string();
    for signature in [
        shopagent_connectors::easypost::webhook::sign("wrong-secret", forged.as_bytes()),
        String::new(),
    ] {
        let response = app
            .client
            .post(app.url("/v1/webhooks/easypost/acme"))
            .header("x-hmac-signature", signature)
            .body(forged.clone())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let still = app
        .get(&format!("/v1/orders/{order}"), &app.shopper("alice"))
        .await;
    assert_eq!(still.body["status"], "shipped");

    carrier.advance(parcel, "in_transit").expect("in transit");
    carrier.advance(parcel, "out_for_delivery").expect("out");
    let out = order_until(&app, &order, |o| o["status"] == "out_for_delivery").await;
    assert_eq!(out.body["status"], "out_for_delivery", "{:?}", out.body);
    carrier.advance(parcel, "delivered").expect("delivered");
    let delivered = order_until(&app, &order, |o| o["status"] == "delivered").await;
    assert_eq!(delivered.body["status"], "delivered");
    let hub = loop {
        let hub = app
            .get("/v1/orders?status=delivered", &app.shopper("alice"))
            .await;
        if hub.body["orders"].as_array().is_some_and(|o| !o.is_empty()) || Instant::now() > deadline
        {
            break hub;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events: Vec<&str> = hub.body["orders"][0]["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(
        events.ends_with(&["shipped", "out_for_delivery", "delivered"]),
        "{events:?}"
    );
    app.stop().await;
}

async fn a_charge_from_another_acceptor_is_declined_by_the_payment_rules(backend: Backend) {
    let World {
        app,
        issuer,
        merchant,
        ..
    } = world(backend, FailureMode::None).await;
    // The merchant presents an acceptor id the registry does not list for it.
    let issuer_url = issuer.spawn().await.expect("second issuer endpoint").0;
    merchant.charge_cards_with(&issuer_url, "sk_test_e2e", "9999999999");
    let (mandate, order) = check_out(&app).await;
    let failed = settled_order(&app, &order).await;
    assert_eq!(failed.body["status"], "failed", "{:?}", failed.body);
    let authorizations = issuer.authorizations();
    assert_eq!(authorizations.len(), 1);
    assert_eq!(authorizations[0]["approved"], false);
    let payment = failed.body["payment_id"].as_str().expect("payment id");
    let deadline = Instant::now() + Duration::from_secs(30);
    let payment = loop {
        let payment = app
            .get(&format!("/v1/payments/{payment}"), &app.shopper("alice"))
            .await;
        if payment.body["status"] == "voided" || Instant::now() > deadline {
            break payment;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(payment.body["status"], "voided", "{:?}", payment.body);
    let settled = mandate_settles(&app, &mandate).await;
    assert_eq!(settled.body["spent_this_period"], usd(0));
    app.stop().await;
}

async fn the_merchant_prices_its_part_of_the_cart(backend: Backend) {
    let World { app, merchant, .. } = world(backend, FailureMode::None).await;
    let alice = app.shopper("alice");
    let cart = app
        .post("/v1/carts", &alice, json!({"currency": "USD"}))
        .await
        .body["id"]
        .as_str()
        .expect("cart")
        .to_owned();
    for line in [
        json!({"offer_id": "sku:tent", "merchant": "acme", "title": "Tent", "category": "outdoor", "unit_price": usd(10_000), "quantity": 2}),
        json!({"offer_id": "sku:kettle", "merchant": "elsewhere", "title": "Kettle", "category": "outdoor", "unit_price": usd(2_000), "quantity": 1}),
    ] {
        app.post(&format!("/v1/carts/{cart}/lines"), &alice, line)
            .await;
    }
    let fetch = |merchant: &str| json!({"merchant": merchant});
    // No address yet: nothing to ship to, nothing to price.
    app.post(
        &format!("/v1/carts/{cart}/quotes/fetch"),
        &alice,
        fetch("acme"),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "address_required");
    let address = json!({"name": "Ada Shopper", "line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"});
    app.post(&format!("/v1/carts/{cart}/address"), &alice, address)
        .await;

    let quoted = app
        .post(
            &format!("/v1/carts/{cart}/quotes/fetch"),
            &alice,
            fetch("acme"),
        )
        .await;
    assert_eq!(quoted.status, StatusCode::OK, "{:?}", quoted.body);
    let quote = quoted.body["quotes"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["merchant"] == "acme"))
        .expect("acme's quote");
    assert_eq!(
        (&quote["items_total"], &quote["shipping"], &quote["tax"]),
        (&usd(20_000), &usd(500), &usd(1_600)),
        "the merchant's own figures"
    );
    assert!(merchant.orders().is_empty(), "a quote buys nothing");
    // A merchant with no connector cannot be asked; the agent records a quote instead.
    app.post(
        &format!("/v1/carts/{cart}/quotes/fetch"),
        &alice,
        fetch("elsewhere"),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "quote_not_offered");
    // An unreachable merchant: try again later.
    merchant.set_failure_mode(FailureMode::ServerError);
    let down = app
        .post(
            &format!("/v1/carts/{cart}/quotes/fetch"),
            &alice,
            fetch("acme"),
        )
        .await;
    down.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "merchant_unavailable");
    assert!(down.header("retry-after").is_some());
    app.stop().await;
}

async fn each_failure_mode_ends_typed_with_nothing_left_half_done(backend: Backend) {
    for (mode, status, reason) in [
        (
            FailureMode::AddressRejected,
            "failed",
            Some("address_invalid"),
        ),
        (
            FailureMode::ServerError,
            "failed",
            Some("merchant_unavailable"),
        ),
        (
            FailureMode::Slow(Duration::from_millis(300)),
            "placed",
            None,
        ),
    ] {
        let World { app, issuer, .. } = world(backend, mode).await;
        let (mandate, order) = check_out(&app).await;
        let ended = settled_order(&app, &order).await;
        assert_eq!(ended.body["status"], status, "{mode:?}: {:?}", ended.body);
        let settled = mandate_settles(&app, &mandate).await;
        assert!(
            settled.body["open_reservations"]
                .as_array()
                .is_some_and(Vec::is_empty),
            "{mode:?}: no budget left held"
        );
        if let Some(reason) = reason {
            assert_eq!(settled.body["spent_this_period"], usd(0), "{mode:?}");
            let hub = order_in_hub(&app, &order, "failed").await;
            let failure = hub["timeline"]
                .as_array()
                .and_then(|t| t.iter().find(|e| e["event"] == "failed").cloned())
                .expect("failure in the timeline");
            assert_eq!(failure["reason"], reason, "{mode:?}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !issuer_cards_canceled(&issuer) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                issuer_cards_canceled(&issuer),
                "{mode:?}: the card is voided"
            );
        } else {
            assert_eq!(settled.body["spent_this_period"], usd(11_300), "{mode:?}");
        }
        app.stop().await;
    }
}

/// The order's row in the hub once it shows `status`.
async fn order_in_hub(app: &TestApp, order: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hub = app
            .get(
                &format!("/v1/orders?status={status}"),
                &app.shopper("alice"),
            )
            .await;
        let row = hub.body["orders"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["order_id"] == order).cloned());
        match row {
            Some(row) => return row,
            None if Instant::now() > deadline => panic!("{order} never {status} in the hub"),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn a_failure_at_one_merchant_leaves_the_other_order_intact(backend: Backend) {
    let World { app, .. } = world(backend, FailureMode::None).await;
    // A second UCP merchant, whose item sells out between quote and checkout.
    let bolt = SandboxMerchant::new();
    let (bolt_url, _) = bolt.spawn().await.expect("second merchant");
    let ops = app.token("acme", "ops", Role::Ops, None);
    let registered = app
        .post("/v1/merchants", &ops, json!({"merchant_id": "bolt", "name": "Bolt Gear", "protocol": "ucp", "api_endpoint": bolt_url, "paths": ["api"]}))
        .await;
    assert_eq!(registered.status, StatusCode::CREATED);
    let (mandate, agent, cart) = agent_cart(&app).await;
    for (offer, merchant, price) in [("sku:tent", "acme", 10_000), ("sku:stove", "bolt", 4_500)] {
        let line = json!({"offer_id": offer, "merchant": merchant, "title": offer, "category": "outdoor", "unit_price": usd(price), "quantity": 1});
        assert_eq!(
            app.post(&format!("/v1/carts/{cart}/lines"), &agent, line)
                .await
                .status,
            StatusCode::OK
        );
    }
    let address = json!({"name": "Ada Shopper", "line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"});
    app.post(&format!("/v1/carts/{cart}/address"), &agent, address)
        .await;
    for merchant in ["acme", "bolt"] {
        let quoted = app
            .post(
                &format!("/v1/carts/{cart}/quotes/fetch"),
                &agent,
                json!({"merchant": merchant}),
            )
            .await;
        assert_eq!(
            quoted.status,
            StatusCode::OK,
            "{merchant}: {:?}",
            quoted.body
        );
    }
    bolt.set_failure_mode(FailureMode::OutOfStock);
    let checkout = app
        .post(&format!("/v1/carts/{cart}/checkout"), &agent, json!({}))
        .await;
    let order_of = |merchant: &str| {
        checkout.body["sub_carts"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["merchant"] == merchant))
            .and_then(|s| s["order_id"].as_str())
            .expect("an order per merchant")
            .to_owned()
    };
    let (acme_order, bolt_order) = (order_of("acme"), order_of("bolt"));

    let placed = settled_order(&app, &acme_order).await;
    assert_eq!(placed.body["status"], "placed", "{:?}", placed.body);
    let failed = settled_order(&app, &bolt_order).await;
    assert_eq!(failed.body["status"], "failed", "{:?}", failed.body);
    // The shopper is told exactly what happened at each merchant.
    let failure = order_in_hub(&app, &bolt_order, "failed").await["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["event"] == "failed").cloned())
        .expect("failure in the timeline");
    assert_eq!(failure["reason"], "inventory_changed");
    order_in_hub(&app, &acme_order, "placed").await;
    let settled = mandate_settles(&app, &mandate).await;
    assert_eq!(
        settled.body["spent_this_period"],
        usd(11_300),
        "acme's spend committed, bolt's reservation released"
    );
    app.stop().await;
}

/// While the purchases accepted wait behind the log longer than the limit, an autopilot
/// checkout is refused (503 `purchases_behind`, with `Retry-After`) and writes nothing;
/// once they are carried out, the same request (same key) checks out.
async fn autopilot_checkouts_wait_while_the_purchases_behind_them_are_late(backend: Backend) {
    // The merchant takes six seconds over each call, and a placement is two of them
    // (each under the connector's timeout of ten): the purchases fall behind.
    let slow = FailureMode::Slow(Duration::from_secs(6));
    let World { app, merchant, .. } = world_configured(backend, slow, |server| {
        server.with_max_purchase_delay(Some(Duration::from_secs(1)))
    })
    .await;
    // Accepted: nothing waits yet. Its placement then waits on the merchant.
    let (_, first_order) = check_out(&app).await;
    let (mandate, agent, cart) = cart_ready_to_check_out(&app).await;
    let key = uuid::Uuid::new_v4().to_string();
    let checkout = |key: String| {
        let (app, agent, cart) = (&app, agent.clone(), cart.clone());
        async move {
            let request = app
                .client
                .post(app.url(&format!("/v1/carts/{cart}/checkout")))
                .bearer_auth(&agent)
                .header("Idempotency-Key", key)
                .json(&json!({}));
            Reply::read(request.send().await.expect("checkout")).await
        }
    };
    // Once the process is seen more than two seconds behind, the delay measured (once a
    // second) is past the limit of one.
    let ops = app.token("acme", "ops", Role::Ops, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = app.get("/v1/ops/projections", &ops).await;
        let behind = common::projection(&listed.body, "checkout_process")["lag_seconds"]
            .as_f64()
            .unwrap_or_default();
        if behind > 2.5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the purchases never fell behind: {:?}",
            listed.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = checkout(key.clone()).await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "purchases_behind");
    let retry_after: u32 = refused
        .header("retry-after")
        .and_then(|seconds| seconds.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    // Nothing was written: the cart is still open, nothing is reserved on the mandate.
    let alice = app.shopper("alice");
    let open = app.get(&format!("/v1/carts/{cart}"), &agent).await;
    assert_eq!(open.body["status"], "open", "{:?}", open.body);
    let held = app.get(&format!("/v1/mandates/{mandate}"), &alice).await;
    assert_eq!(held.body["open_reservations"], json!([]), "{:?}", held.body);

    // The merchant answers at once again: the first order is placed, the purchases
    // catch up, and the same request checks out.
    merchant.set_failure_mode(FailureMode::None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let accepted = loop {
        let reply = checkout(key.clone()).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.body["sub_carts"][0]["status"], "reserved");
    let placed = settled_order(&app, &first_order).await;
    assert_eq!(placed.body["status"], "placed", "{:?}", placed.body);
    app.stop().await;
}
