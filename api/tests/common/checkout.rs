//! A world to check out in: the sandbox issuer, UCP merchant and carrier, and a server
//! wired to them with the merchant `acme` registered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shopagent::auth::Role;
use shopagent::server::Server;
use shopagent_connectors::Sandbox;
use shopagent_connectors::easypost::{EasyPostConfig, EasyPostTracking};
use shopagent_connectors::sandbox_carrier::SandboxCarrier;
use shopagent_connectors::sandbox_issuer::SandboxIssuer;
use shopagent_connectors::sandbox_merchant::{FailureMode, SandboxMerchant};
use shopagent_connectors::stripe_issuing::{StripeIssuing, StripeIssuingConfig};

use super::{Backend, Reply, TestApp, spawn_app_with_server};

pub struct World {
    pub app: TestApp,
    pub issuer: SandboxIssuer,
    pub merchant: SandboxMerchant,
    pub carrier: SandboxCarrier,
}

pub const TRACKING_SECRET: &str = "tracking-webhook-secret";
pub const STRIPE_SECRET: &str = "whsec_e2e_secret";

pub async fn world(backend: Backend, mode: FailureMode) -> World {
    world_configured(backend, mode, |server| server).await
}

/// [`world`], with the server configured further by `configure` before it starts.
pub async fn world_configured(
    backend: Backend,
    mode: FailureMode,
    configure: impl FnOnce(Server) -> Server,
) -> World {
    let issuer = SandboxIssuer::new("sk_test_e2e");
    let (issuer_url, _) = issuer.spawn().await.expect("issuer");
    let merchant = SandboxMerchant::new();
    merchant.set_failure_mode(mode);
    let (merchant_url, _) = merchant.spawn().await.expect("merchant");
    let connector = StripeIssuing::new(StripeIssuingConfig {
        base_url: issuer_url.clone(),
        api_key: "sk_test_e2e".into(),
        cardholder: "ich_shopagent".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("connector");
    let carrier = SandboxCarrier::new("ep_test_key", TRACKING_SECRET);
    let (carrier_url, _) = carrier.spawn().await.expect("carrier");
    let tracking = EasyPostTracking::new(EasyPostConfig {
        base_url: carrier_url,
        api_key: "ep_test_key".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("tracking connector");
    let app = spawn_app_with_server(backend, None, |server| {
        configure(server)
            .with_stripe_webhook_secret(Some(STRIPE_SECRET.into()))
            .with_card_issuer(Some(Arc::new(connector)))
            .with_tracking(Some(Arc::new(tracking)))
            .with_tracking_webhook_secret(Some(TRACKING_SECRET.into()))
    })
    .await;
    carrier.deliver_webhooks_to(app.url("/v1/webhooks/easypost/acme"));
    // The merchant charges the virtual card; the issuer asks shopagent to decide.
    issuer.deliver_authorizations_to(app.url("/v1/webhooks/stripe"), STRIPE_SECRET);
    merchant.charge_cards_with(&issuer_url, "sk_test_e2e", "4445550001");
    let ops = app.token("acme", "ops", Role::Ops, None);
    let registered = app
        .post("/v1/merchants", &ops, json!({"merchant_id": "acme", "name": "Acme Outdoor", "protocol": "ucp", "api_endpoint": merchant_url, "paths": ["api"], "card_acceptor_ids": ["4445550001"]}))
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{:?}",
        registered.body
    );
    World {
        app,
        issuer,
        merchant,
        carrier,
    }
}

pub fn usd(minor: i64) -> Value {
    json!({"minor": minor, "currency": "USD"})
}

/// Mandate, agent, cart with a quoted line, checkout: returns (mandate id, order id).
pub async fn check_out(app: &TestApp) -> (String, String) {
    check_out_in_trace(app, None).await
}

/// Alice's autopilot mandate (500.00 USD per order), her agent's token under it, and an
/// empty cart the agent made: (mandate id, agent token, cart id).
pub async fn agent_cart(app: &TestApp) -> (String, String, String) {
    let mandate = app
        .post(
            "/v1/mandates",
            &app.shopper("alice"),
            json!({"mode": "autopilot", "currency": "USD", "per_order_limit": usd(50_000)}),
        )
        .await;
    let mandate = mandate.body["id"].as_str().expect("mandate").to_owned();
    let agent = app.token("acme", "agent-1", Role::Agent, Some(&mandate));
    let cart = app
        .post("/v1/carts", &agent, json!({"currency": "USD"}))
        .await
        .body["id"]
        .as_str()
        .expect("cart")
        .to_owned();
    (mandate, agent, cart)
}

/// [`check_out`], with the checkout request sent under the W3C `traceparent` given.
pub async fn check_out_in_trace(app: &TestApp, traceparent: Option<&str>) -> (String, String) {
    let (mandate, agent, cart) = cart_ready_to_check_out(app).await;
    let mut checkout = app
        .client
        .post(app.url(&format!("/v1/carts/{cart}/checkout")))
        .bearer_auth(&agent)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({}));
    if let Some(traceparent) = traceparent {
        checkout = checkout.header("traceparent", traceparent);
    }
    let checkout = Reply::read(checkout.send().await.expect("checkout")).await;
    assert_eq!(
        checkout.body["sub_carts"][0]["status"], "reserved",
        "{:?}",
        checkout.body
    );
    (
        mandate,
        checkout.body["sub_carts"][0]["order_id"]
            .as_str()
            .expect("order")
            .to_owned(),
    )
}

/// [`agent_cart`] with a 100.00 USD tent from `acme`, an address and acme's quote:
/// (mandate id, agent token, cart id).
pub async fn cart_ready_to_check_out(app: &TestApp) -> (String, String, String) {
    let (mandate, agent, cart) = agent_cart(app).await;
    let line = json!({"offer_id": "sku:tent", "merchant": "acme", "title": "Tent", "category": "outdoor", "unit_price": usd(10_000), "quantity": 1});
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/lines"), &agent, line)
            .await
            .status,
        StatusCode::OK
    );
    let address = json!({"name": "Ada Shopper", "line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"});
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/address"), &agent, address)
            .await
            .status,
        StatusCode::OK
    );
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let quote = json!({"merchant": "acme", "items_total": usd(10_000), "shipping": usd(500), "tax": usd(800), "expires_at": expires});
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/quotes"), &agent, quote)
            .await
            .status,
        StatusCode::OK
    );
    (mandate, agent, cart)
}

/// Polls the order until it leaves `created`/`submitted`.
pub async fn settled_order(app: &TestApp, order: &str) -> Reply {
    let alice = app.shopper("alice");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get(&format!("/v1/orders/{order}"), &alice).await;
        let status = reply.body["status"].as_str().unwrap_or_default().to_owned();
        if !matches!(status.as_str(), "created" | "submitted") || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn mandate_settles(app: &TestApp, mandate: &str) -> Reply {
    let alice = app.shopper("alice");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get(&format!("/v1/mandates/{mandate}"), &alice).await;
        if reply.body["open_reservations"]
            .as_array()
            .is_some_and(Vec::is_empty)
            || Instant::now() > deadline
        {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
