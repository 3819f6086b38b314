//! `shopagent demo`: the whole story of an agent-made purchase, through the public API
//! only, against the sandboxes — a UCP merchant, a card issuer and a carrier — printing
//! each step and what it checked. It exits 0 only if every step did what it should.
//!
//! By default it starts its own server on the embedded store in a temporary directory.
//! With `--url` it drives a server already running; that server must have been started
//! with the sandbox settings the demo prints (the sandboxes then listen on fixed ports)
//! and the same token secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shopagent_commands::StoreConfig;
use shopagent_connectors::Sandbox;
use shopagent_connectors::easypost::{EasyPostConfig, EasyPostTracking};
use shopagent_connectors::sandbox_carrier::SandboxCarrier;
use shopagent_connectors::sandbox_issuer::SandboxIssuer;
use shopagent_connectors::sandbox_merchant::SandboxMerchant;
use shopagent_connectors::stripe_issuing::{StripeIssuing, StripeIssuingConfig};
use shopagent_domain::ids::MandateId;
use tokio_util::sync::CancellationToken;

use crate::Server;
use crate::auth::{Authenticator, Claims, Role};

/// Secrets shared by the sandboxes and the server. They protect nothing real.
pub const ISSUER_KEY: &str = "sk_test_shopagent_demo";
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_shopagent_demo";
pub const TRACKING_KEY: &str = "ep_test_shopagent_demo";
pub const TRACKING_WEBHOOK_SECRET: &str = "shopagent-demo-tracking";
/// The card-acceptor id the sandbox merchant presents when it charges a card.
const ACCEPTOR_ID: &str = "4445550001";
const MERCHANT: &str = "acme-outdoor";
const DEEPLINK_MERCHANT: &str = "brightmart";
/// How long one step may wait for asynchronous work (process managers, webhooks).
const PATIENCE: Duration = Duration::from_secs(30);

/// Where the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// A running server to drive; `None` starts one.
    pub url: Option<String>,
    /// First of three ports for the sandboxes (issuer, merchant, carrier); 0 picks free
    /// ones. Needed with `url`.
    pub sandbox_port: u16,
    /// Token secret of the server (`SHOPAGENT_JWT_SECRET`); needed with `url`.
    pub jwt_secret: Option<String>,
}

struct Sandboxes {
    issuer: SandboxIssuer,
    issuer_url: String,
    merchant: SandboxMerchant,
    merchant_url: String,
    carrier: SandboxCarrier,
    carrier_url: String,
}

async fn start_sandboxes(first_port: u16) -> anyhow::Result<Sandboxes> {
    let at = |offset: u16| {
        let port = if first_port == 0 {
            0
        } else {
            first_port + offset
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    };
    let issuer = SandboxIssuer::new(ISSUER_KEY);
    let (issuer_url, _) = issuer.spawn_at(at(0)).await.context("sandbox issuer")?;
    let merchant = SandboxMerchant::new();
    let (merchant_url, _) = merchant.spawn_at(at(1)).await.context("sandbox merchant")?;
    let carrier = SandboxCarrier::new(TRACKING_KEY, TRACKING_WEBHOOK_SECRET);
    let (carrier_url, _) = carrier.spawn_at(at(2)).await.context("sandbox carrier")?;
    Ok(Sandboxes {
        issuer,
        issuer_url,
        merchant,
        merchant_url,
        carrier,
        carrier_url,
    })
}

/// The server settings that point at the sandboxes.
fn server_settings(sandboxes: &Sandboxes) -> Vec<(&'static str, String)> {
    vec![
        ("SHOPAGENT_CARD_ISSUER_URL", sandboxes.issuer_url.clone()),
        ("SHOPAGENT_CARD_ISSUER_KEY", ISSUER_KEY.into()),
        (
            "SHOPAGENT_STRIPE_WEBHOOK_SECRET",
            STRIPE_WEBHOOK_SECRET.into(),
        ),
        ("SHOPAGENT_TRACKING_URL", sandboxes.carrier_url.clone()),
        ("SHOPAGENT_TRACKING_KEY", TRACKING_KEY.into()),
        (
            "SHOPAGENT_TRACKING_WEBHOOK_SECRET",
            TRACKING_WEBHOOK_SECRET.into(),
        ),
    ]
}

/// A server of its own on the embedded store, wired to the sandboxes.
async fn start_server(
    sandboxes: &Sandboxes,
    data_dir: &std::path::Path,
    secret: &[u8],
) -> anyhow::Result<(
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let issuer = StripeIssuing::new(StripeIssuingConfig {
        base_url: sandboxes.issuer_url.clone(),
        api_key: ISSUER_KEY.into(),
        cardholder: "ich_shopagent_demo".into(),
        timeout: Duration::from_secs(10),
    })?;
    let tracking = EasyPostTracking::new(EasyPostConfig {
        base_url: sandboxes.carrier_url.clone(),
        api_key: TRACKING_KEY.into(),
        timeout: Duration::from_secs(10),
    })?;
    let server = Server::build(
        &StoreConfig::new(None, data_dir),
        Authenticator::new(Some(secret), None),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?
    .with_stripe_webhook_secret(Some(STRIPE_WEBHOOK_SECRET.into()))
    .with_tracking_webhook_secret(Some(TRACKING_WEBHOOK_SECRET.into()))
    .with_card_issuer(Some(Arc::new(issuer)))
    .with_tracking(Some(Arc::new(tracking)));
    let url = format!("http://{}", server.local_addr()?);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Ok((url, shutdown, task))
}

/// Runs the story; returns whether every step did what it should.
pub async fn run(options: DemoOptions) -> anyhow::Result<bool> {
    let sandboxes = start_sandboxes(options.sandbox_port).await?;
    let data_dir = std::env::temp_dir().join(format!("shopagent-demo-{}", uuid::Uuid::new_v4()));
    let (url, secret, server) = match &options.url {
        Some(url) => {
            let secret = options
                .jwt_secret
                .clone()
                .context("--url needs the server's token secret (SHOPAGENT_JWT_SECRET)")?;
            println!("Driving the server at {url}; it must run with:");
            for (name, value) in server_settings(&sandboxes) {
                println!("  {name}={value}");
            }
            (url.trim_end_matches('/').to_owned(), secret, None)
        }
        None => {
            let secret = uuid::Uuid::new_v4().simple().to_string();
            let (url, shutdown, task) =
                start_server(&sandboxes, &data_dir, secret.as_bytes()).await?;
            (url, secret, Some((shutdown, task)))
        }
    };
    println!("shopagent at {url}");
    println!("  sandbox card issuer   {}", sandboxes.issuer_url);
    println!("  sandbox UCP merchant  {}", sandboxes.merchant_url);
    println!("  sandbox carrier       {}", sandboxes.carrier_url);
    println!();

    let story = Story::new(url, secret.as_bytes(), sandboxes);
    let outcome = story.tell().await;
    match &outcome {
        Ok(()) => println!("\nEvery step did what it should."),
        Err(error) => println!("\nThe demo stopped: {error:#}"),
    }
    if let Some((shutdown, task)) = server {
        shutdown.cancel();
        let _ = task.await;
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(outcome.is_ok())
}

/// The actors and the HTTP client, with the ids the story collects.
struct Story {
    url: String,
    http: reqwest::Client,
    auth: Authenticator,
    tenant: String,
    sandboxes: Sandboxes,
    step: std::sync::atomic::AtomicUsize,
}

fn usd(minor: i64) -> Value {
    json!({"minor": minor, "currency": "USD"})
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn text(value: &Value, field: &str) -> anyhow::Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the answer has no {field}: {value}"))
}

impl Story {
    fn new(url: String, secret: &[u8], sandboxes: Sandboxes) -> Self {
        Self {
            url,
            http: reqwest::Client::new(),
            auth: Authenticator::new(Some(secret), None),
            // A tenant of its own: the demo can run again against the same server.
            tenant: format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            sandboxes,
            step: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn token(
        &self,
        subject: &str,
        role: Role,
        mandate: Option<MandateId>,
    ) -> anyhow::Result<String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: subject.into(),
            tenant: self.tenant.clone(),
            role,
            mandate,
            exp: now + 3600,
            iat: now,
        };
        Ok(self.auth.issue(&claims)?)
    }

    fn done(&self, what: &str, detail: impl std::fmt::Display) {
        let n = self.step.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        println!("{n:>2}. ✓ {what}: {detail}");
    }

    /// Sends a request; a POST carries a fresh `Idempotency-Key`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if method == Method::POST {
            request = request.header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// POSTs and expects a 2xx.
    async fn post(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        let (status, answer) = self.call(Method::POST, path, token, Some(body)).await?;
        ensure!(
            status.is_success(),
            "POST {path} answered {status}: {answer}"
        );
        Ok(answer)
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let (status, answer) = self.call(Method::GET, path, token, None).await?;
        ensure!(
            status.is_success(),
            "GET {path} answered {status}: {answer}"
        );
        Ok(answer)
    }

    /// GETs until `done` holds on the answer.
    async fn wait_for(
        &self,
        path: &str,
        token: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = self.get(path, token).await?;
            if done(&answer) {
                return Ok(answer);
            }
            if Instant::now() > deadline {
                bail!("waited {PATIENCE:?} for {what}; last answer: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn tell(&self) -> anyhow::Result<()> {
        let sandboxes = &self.sandboxes;
        let ops = self.token("ops-demo", Role::Ops, None)?;
        let shopper = self.token("ada", Role::Shopper, None)?;

        // The platform's webhook URLs, given to the merchant, issuer and carrier.
        sandboxes.merchant.deliver_webhooks_to(format!(
            "{}/v1/webhooks/ucp/{}/{MERCHANT}",
            self.url, self.tenant
        ));
        sandboxes.issuer.deliver_authorizations_to(
            format!("{}/v1/webhooks/stripe", self.url),
            STRIPE_WEBHOOK_SECRET,
        );
        sandboxes
            .merchant
            .charge_cards_with(&sandboxes.issuer_url, ISSUER_KEY, ACCEPTOR_ID);
        sandboxes
            .carrier
            .deliver_webhooks_to(format!("{}/v1/webhooks/easypost/{}", self.url, self.tenant));

        self.post("/v1/merchants", &ops, json!({
            "merchant_id": MERCHANT, "name": "Acme Outdoor", "protocol": "ucp",
            "api_endpoint": sandboxes.merchant_url, "deeplink_base": "https://acme-outdoor.example/checkout",
            "paths": ["api", "deeplink"], "card_acceptor_ids": [ACCEPTOR_ID]})).await?;
        self.post(
            "/v1/merchants",
            &ops,
            json!({
            "merchant_id": DEEPLINK_MERCHANT, "name": "Bright Mart",
            "deeplink_base": "https://brightmart.example/cart", "paths": ["deeplink"]}),
        )
        .await?;
        self.done(
            "ops registers two merchants",
            format!(
                "{MERCHANT} (UCP API at {}), {DEEPLINK_MERCHANT} (deep link only)",
                sandboxes.merchant_url
            ),
        );

        let mandate = self
            .post(
                "/v1/mandates",
                &shopper,
                json!({
                "mode": "autopilot", "currency": "USD", "per_order_limit": usd(50_000),
                "period_budget": {"limit": usd(100_000), "period": "month"}}),
            )
            .await?;
        let mandate_id = text(&mandate, "id")?;
        self.done(
            "Ada gives her agent an autopilot mandate",
            format!("{mandate_id}: up to $500.00 an order, $1,000.00 a month"),
        );

        let agent = self.token(
            "agent-7",
            Role::Agent,
            Some(MandateId(uuid::Uuid::parse_str(&mandate_id)?)),
        )?;
        let run = self
            .post(
                "/v1/runs",
                &agent,
                json!({"prompt": "a two-person tent and a kettle for a weekend trip"}),
            )
            .await?;
        let run_id = text(&run, "id")?;
        for (kind, input, output) in [
            ("search", "two-person tent", "3 offers"),
            ("rank", "3 offers by landed cost", "Trail Tent 2P first"),
            ("add_to_cart", "sku:tent from acme-outdoor", "line added"),
            ("add_to_cart", "sku:kettle from brightmart", "line added"),
        ] {
            self.post(
                &format!("/v1/runs/{run_id}/actions"),
                &agent,
                json!({
                "kind": kind, "input_digest": digest(input), "output_digest": digest(output),
                "citations": ["https://acme-outdoor.example/p/tent"], "latency_ms": 120}),
            )
            .await?;
        }
        self.done(
            "the agent starts a run and records its actions",
            format!("run {run_id}, 4 actions in the ledger"),
        );

        let cart = self
            .post("/v1/carts", &agent, json!({"currency": "USD"}))
            .await?;
        let cart_id = text(&cart, "id")?;
        for line in [
            json!({"offer_id": "sku:tent", "merchant": MERCHANT, "title": "Trail Tent 2P", "category": "outdoor", "unit_price": usd(10_000), "quantity": 1}),
            json!({"offer_id": "sku:kettle", "merchant": DEEPLINK_MERCHANT, "title": "Camp Kettle", "category": "outdoor", "unit_price": usd(2_500), "quantity": 1}),
        ] {
            self.post(&format!("/v1/carts/{cart_id}/lines"), &agent, line)
                .await?;
        }
        self.post(
            &format!("/v1/carts/{cart_id}/address"),
            &agent,
            json!({
            "name": "Ada Lovelace", "line1": "12 Analytical Row", "city": "Springfield",
            "region": "IL", "postal_code": "62701", "country": "US"}),
        )
        .await?;
        // The UCP merchant prices its part itself; the other one is quoted by the agent.
        let quoted = self
            .post(
                &format!("/v1/carts/{cart_id}/quotes/fetch"),
                &agent,
                json!({"merchant": MERCHANT}),
            )
            .await?;
        let quote = quoted["quotes"]
            .as_array()
            .and_then(|q| q.iter().find(|q| q["merchant"] == MERCHANT))
            .cloned()
            .context("no quote from the merchant")?;
        let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
            .format(&time::format_description::well_known::Rfc3339)?;
        self.post(
            &format!("/v1/carts/{cart_id}/quotes"),
            &agent,
            json!({"merchant": DEEPLINK_MERCHANT, "items_total": usd(2_500), "shipping": usd(0),
                   "tax": usd(200), "expires_at": expires}),
        )
        .await?;
        self.done(
            "the agent fills one cart at two merchants; the UCP merchant prices its part",
            format!(
                "cart {cart_id}: {MERCHANT} quotes items {}, shipping {}, tax {} (minor units); $27.00 at {DEEPLINK_MERCHANT}",
                quote["items_total"]["minor"], quote["shipping"]["minor"], quote["tax"]["minor"]
            ),
        );

        let checkout = self
            .post(&format!("/v1/carts/{cart_id}/checkout"), &agent, json!({}))
            .await?;
        let sub_carts = checkout["sub_carts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let of = |merchant: &str| {
            sub_carts
                .iter()
                .find(|s| s["merchant"] == merchant)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (api, handoff) = (of(MERCHANT), of(DEEPLINK_MERCHANT));
        ensure!(
            api["status"] == "reserved",
            "the API sub-cart is not reserved: {api}"
        );
        ensure!(
            handoff["status"] == "handoff" && handoff["deeplink"].is_string(),
            "no deep-link hand-off: {handoff}"
        );
        let order_id = text(&api, "order_id")?;
        self.done("autopilot checkout splits the cart", format!("{MERCHANT}: budget reserved, order {order_id}; {DEEPLINK_MERCHANT}: hand-off at {}", handoff["deeplink"].as_str().unwrap_or_default()));

        let order_path = format!("/v1/orders/{order_id}");
        let placed = self
            .wait_for(&order_path, &shopper, "the order to be placed", |o| {
                !matches!(o["status"].as_str(), Some("created" | "submitted"))
            })
            .await?;
        ensure!(
            placed["status"] == "placed" || placed["status"] == "confirmed",
            "the order did not go through: {placed}"
        );
        let reference = text(&placed, "merchant_reference")?;
        let payment_id = text(&placed, "payment_id")?;
        self.done(
            "a single-use virtual card is issued and the order placed over UCP",
            format!("merchant order {reference}"),
        );

        let payment = self
            .get(&format!("/v1/payments/{payment_id}"), &shopper)
            .await?;
        ensure!(
            payment["status"] == "authorized",
            "the card was not authorized: {payment}"
        );
        let authorizations = sandboxes.issuer.authorizations();
        ensure!(
            authorizations.len() == 1 && authorizations[0]["approved"] == true,
            "issuer saw {authorizations:?}"
        );
        self.done(
            "the merchant charges the card; shopagent approves the authorization",
            format!(
                "{} minor units, card {}",
                authorizations[0]["amount"],
                payment["card_reference"].as_str().unwrap_or("?")
            ),
        );

        self.wait_for(&order_path, &shopper, "the merchant's confirmation", |o| {
            o["status"] == "confirmed"
        })
        .await?;
        self.done(
            "the merchant's signed order event confirms the order",
            "status confirmed",
        );

        let parcel = "1Z999AA10123456784";
        sandboxes.merchant.ship(&reference, "UPS", parcel)?;
        self.wait_for(&order_path, &shopper, "the shipment", |o| {
            o["status"] == "shipped"
        })
        .await?;
        let deadline = Instant::now() + PATIENCE;
        while sandboxes.carrier.tracked().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "the parcel was never registered for tracking"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.done(
            "the merchant ships; the parcel is registered with the carrier",
            format!("UPS {parcel}"),
        );

        sandboxes.carrier.advance(parcel, "in_transit")?;
        sandboxes.carrier.advance(parcel, "out_for_delivery")?;
        self.wait_for(&order_path, &shopper, "out for delivery", |o| {
            o["status"] == "out_for_delivery"
        })
        .await?;
        sandboxes.carrier.advance(parcel, "delivered")?;
        self.wait_for(&order_path, &shopper, "the delivery", |o| {
            o["status"] == "delivered"
        })
        .await?;
        self.done(
            "the carrier's signed tracking events follow the parcel",
            "in transit → out for delivery → delivered",
        );

        let requested = self
            .post(
                &format!("{order_path}/returns"),
                &shopper,
                json!({"reason": "the tent is too small"}),
            )
            .await?;
        let return_id = text(&requested, "created_id")?;
        let rma = sandboxes.merchant.accept_return(&reference)?;
        self.wait_for(&order_path, &shopper, "the RMA", |o| {
            o["returns"][0]["rma"] == rma.as_str()
        })
        .await?;
        sandboxes.merchant.receive_return(&reference, &rma)?;
        self.wait_for(&order_path, &shopper, "the return to arrive", |o| {
            o["returns"][0]["status"] == "returned"
        })
        .await?;
        self.done(
            "Ada returns the tent",
            format!("return {return_id}, RMA {rma}, received by the merchant"),
        );

        sandboxes.merchant.refund(&reference, 10_000)?;
        let refunded = self
            .wait_for(&order_path, &shopper, "the refund", |o| {
                o["refunded"]["minor"] == 10_000
            })
            .await?;
        self.done(
            "the merchant refunds it",
            format!(
                "{} refunded of {}",
                refunded["refunded"]["minor"], refunded["total"]["minor"]
            ),
        );

        let mandate = self
            .get(&format!("/v1/mandates/{mandate_id}"), &shopper)
            .await?;
        ensure!(
            mandate["spent_this_period"] == usd(11_300),
            "the spend was not committed: {mandate}"
        );
        let hub = self
            .wait_for(
                "/v1/orders",
                &shopper,
                "both orders in the orders hub",
                |h| {
                    h["orders"].as_array().is_some_and(|o| {
                        o.len() == 2 && o.iter().any(|o| o["refunded"]["minor"] == 10_000)
                    })
                },
            )
            .await?;
        let summary: Vec<String> = hub["orders"]
            .as_array()
            .map(|orders| {
                orders
                    .iter()
                    .map(|o| {
                        format!(
                            "{} via {} ({})",
                            o["merchant"].as_str().unwrap_or("?"),
                            o["path"].as_str().unwrap_or("?"),
                            o["status"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.done(
            "the orders hub shows both orders; the mandate shows the spend",
            format!("{}; $113.00 spent this month", summary.join(", ")),
        );

        let finance = self.token("finance-demo", Role::Finance, None)?;
        let today = time::OffsetDateTime::now_utc().date();
        let day = self
            .wait_for(
                &format!("/v1/reconciliation/daily?date={today}"),
                &finance,
                "the card capture and both sides of the refund to reach finance",
                // The issuer's refund and the merchant's are two webhooks, projected
                // in whichever order they arrive.
                |d| {
                    d["totals"][0]["refunded_minor"] == 10_000
                        && d["totals"][0]["merchant_refunded_minor"] == 10_000
                },
            )
            .await?;
        let totals = &day["totals"][0];
        ensure!(
            totals["captured_minor"] == 11_300 && totals["exceptions"] == 0,
            "the day does not reconcile: {day}"
        );
        self.done(
            "finance reconciles the day: captured at shipment, refunded to the card",
            format!(
                "{} captured, {} refunded, net {}, no exception",
                totals["captured_minor"], totals["refunded_minor"], totals["net_minor"]
            ),
        );

        self.post(
            &format!("/v1/runs/{run_id}/complete"),
            &agent,
            json!({"summary": "bought the tent, handed the kettle to Ada"}),
        )
        .await?;
        let ledger = self
            .get(&format!("/v1/runs/{run_id}/ledger"), &shopper)
            .await?;
        let entries = ledger.as_array().map_or(0, Vec::len);
        ensure!(entries >= 6, "the ledger is short: {ledger}");
        self.done(
            "the agent completes its run",
            format!("{entries} ledger entries for the auditor"),
        );
        Ok(())
    }
}
