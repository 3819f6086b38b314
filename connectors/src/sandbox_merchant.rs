//! A sandbox UCP merchant: the checkout-session and catalog-search endpoints of the UCP
//! REST binding over an in-memory store, honouring `Idempotency-Key` as the spec requires (same key and body →
//! the stored answer; same key, other body → 409), with failure modes that can be
//! switched on: out of stock, address rejected, payment declined, slow, 5xx.
//!
//! After a checkout completes, the sandbox keeps the UCP order entity and, once told the
//! platform's webhook URL, sends it as a signed `orderEvent` on creation and on every
//! change a test or the demo makes (ship, deliver, accept and receive a return, refund).
//! Deliveries go out one at a time, in order, and are retried until acknowledged, as
//! the spec requires of a business. Its signing key is published in its profile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ucp::webhook::{SIGNATURE_HEADER, SigningKey, WebhookSigner};

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn push(log: &mut Value, entry: Value) {
    if let Some(entries) = log.as_array_mut() {
        entries.push(entry);
    } else {
        *log = json!([entry]);
    }
}

/// Marks every line fulfilled; returns the lines as log references.
fn fulfil_all(order: &mut Value) -> Value {
    let mut lines = Vec::new();
    if let Some(items) = order["line_items"].as_array_mut() {
        for line in items {
            line["quantity"]["fulfilled"] = line["quantity"]["total"].clone();
            line["status"] = json!("fulfilled");
            lines.push(json!({"id": line["id"], "quantity": line["quantity"]["total"]}));
        }
    }
    Value::Array(lines)
}

/// An order event: the entity as it is now, with a fresh event id and time.
fn order_event(entity: &Value) -> Value {
    let mut event = entity.clone();
    event["event_id"] = json!(format!("evt_{}", uuid::Uuid::new_v4().simple()));
    event["created_time"] = json!(now());
    event
}

/// What the sandbox does wrong, when asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    #[default]
    None,
    OutOfStock,
    AddressRejected,
    PaymentDeclined,
    /// Answers after this long.
    Slow(Duration),
    /// Answers 503 to everything.
    ServerError,
}

#[derive(Debug, Default)]
struct Shop {
    sessions: HashMap<String, Value>,
    answers: HashMap<String, (String, StatusCode, Value)>,
    orders: Vec<String>,
    /// UCP order entities by order id.
    entities: HashMap<String, Value>,
    next: u64,
    exchanges: Vec<Exchange>,
    /// Where order events go, once the platform is known.
    webhooks: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
    /// The card authorization that paid each order, by order id.
    authorizations: HashMap<String, String>,
    /// How long a completion's answer waits after its order event was sent.
    completion_delay: Duration,
}

/// Flat shipping rate, minor units.
pub const SHIPPING: i64 = 500;
/// Sales tax, percent of the items.
pub const TAX_PERCENT: i64 = 8;

/// The demo catalogue: item id → (title, price in minor units).
pub const DEMO_CATALOGUE: &[(&str, &str, i64)] = &[
    ("sku:tent", "Trail Tent 2P", 10_000),
    ("sku:stove", "Camp Stove", 4_500),
    ("sku:lamp", "Rechargeable Headlamp", 2_500),
    ("sku:bag", "Down Sleeping Bag", 8_000),
    ("sku:mug", "Enamel Mug", 1_200),
];

/// Where the sandbox charges cards.
#[derive(Debug, Clone)]
struct CardNetwork {
    issuer_url: String,
    issuer_key: String,
    network_id: String,
    /// One client for every call to the issuer, so calls reuse its connections.
    http: reqwest::Client,
    /// Captures and refunds, made one at a time in order.
    settlements: tokio::sync::mpsc::UnboundedSender<Settlement>,
}

/// Money the merchant moves on a card after the sale: it captures when it ships and
/// refunds the capture when it refunds the order.
#[derive(Debug)]
enum Settlement {
    Capture {
        order: String,
        authorization: String,
    },
    Refund {
        order: String,
        amount: i64,
        key: String,
    },
}

impl CardNetwork {
    /// Calls the issuer until it answers 2xx; returns the answer.
    async fn call(&self, path: &str, key: &str, form: &[(&str, String)]) -> Option<Value> {
        for attempt in 1..=50u32 {
            let sent = self
                .http
                .post(format!("{}{path}", self.issuer_url))
                .bearer_auth(&self.issuer_key)
                .header("Idempotency-Key", key)
                .form(form)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    return response.json().await.ok();
                }
                Ok(response) if response.status().is_client_error() => {
                    tracing::warn!(path, status = %response.status(), "issuer refused a settlement");
                    return None;
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await
                }
            }
        }
        None
    }

    /// Makes settlements in order; remembers each order's capture to refund it.
    async fn settle(self, mut settlements: tokio::sync::mpsc::UnboundedReceiver<Settlement>) {
        let mut captures: HashMap<String, String> = HashMap::new();
        while let Some(settlement) = settlements.recv().await {
            match settlement {
                Settlement::Capture {
                    order,
                    authorization,
                } => {
                    let path =
                        format!("/v1/test_helpers/issuing/authorizations/{authorization}/capture");
                    let answer = self.call(&path, &format!("capture/{order}"), &[]).await;
                    if let Some(capture) = answer
                        .as_ref()
                        .and_then(|a| a["transactions"][0]["id"].as_str())
                    {
                        captures.insert(order, capture.to_owned());
                    }
                }
                Settlement::Refund { order, amount, key } => {
                    let Some(capture) = captures.get(&order) else {
                        tracing::warn!(%order, "sandbox merchant refunds an order it never captured");
                        continue;
                    };
                    let path = format!("/v1/test_helpers/issuing/transactions/{capture}/refund");
                    self.call(&path, &key, &[("refund_amount", amount.to_string())])
                        .await;
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct SandboxMerchant {
    network: Arc<Mutex<Option<CardNetwork>>>,
    catalogue: Arc<Mutex<HashMap<String, (String, i64)>>>,
    shop: Arc<Mutex<Shop>>,
    mode: Arc<Mutex<FailureMode>>,
    signer: WebhookSigner,
    deliveries: Arc<crate::sandbox::Deliveries>,
}

impl Default for SandboxMerchant {
    fn default() -> Self {
        Self::new()
    }
}

/// One checkout call as the sandbox saw it: what the platform sent and what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// `create`, `update`, `complete` or `cancel`.
    pub operation: &'static str,
    pub request: Value,
    pub status: u16,
    pub response: Value,
}

/// A change the sandbox was asked to make to an order it does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sandbox has no order {0}")]
pub struct UnknownOrder(pub String);

impl SandboxMerchant {
    pub fn new() -> Self {
        let catalogue = DEMO_CATALOGUE
            .iter()
            .map(|(id, title, price)| ((*id).to_owned(), ((*title).to_owned(), *price)))
            .collect();
        Self {
            network: Arc::default(),
            catalogue: Arc::new(Mutex::new(catalogue)),
            shop: Arc::default(),
            mode: Arc::default(),
            signer: WebhookSigner::generate(format!("sandbox-{}", uuid::Uuid::new_v4().simple())),
            deliveries: Arc::default(),
        }
    }

    /// Charges the cards it is paid with through this issuer's authorization test helper
    /// (Stripe Issuing shapes), as a card network would, presenting `network_id` as its
    /// card-acceptor id. Without it, any card token is accepted. It captures the
    /// authorization when it ships and refunds the capture when it refunds. Needs a
    /// Tokio runtime.
    pub fn charge_cards_with(&self, issuer_url: &str, issuer_key: &str, network_id: &str) {
        let (settlements, receiver) = tokio::sync::mpsc::unbounded_channel();
        let network = CardNetwork {
            issuer_url: issuer_url.trim_end_matches('/').to_owned(),
            issuer_key: issuer_key.to_owned(),
            network_id: network_id.to_owned(),
            http: reqwest::Client::new(),
            settlements,
        };
        tokio::spawn(network.clone().settle(receiver));
        *self.network.lock().unwrap_or_else(PoisonError::into_inner) = Some(network);
    }

    fn settle(&self, settlement: Settlement) {
        if let Some(network) = &*self.network.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = network.settlements.send(settlement);
        }
    }

    /// Asks the issuer to authorize the session's total on the card a complete request
    /// pays with: `Some((approved, authorization id))`, or `None` when there is nothing to charge (no card
    /// network, a replayed request, a session not ready). An unreachable issuer is an
    /// error, for the platform to retry.
    async fn charge(
        &self,
        headers: &HeaderMap,
        session_id: &str,
        body: &Value,
    ) -> Result<Option<(bool, String)>, String> {
        let network = self
            .network
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(network) = network else {
            return Ok(None);
        };
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(session_id)
            .to_owned();
        let (amount, currency) = {
            let shop = self.shop();
            if shop.answers.contains_key(&key) {
                return Ok(None);
            }
            match shop.sessions.get(session_id) {
                Some(session) if session["status"] == "ready_for_complete" => (
                    session["totals"]
                        .as_array()
                        .and_then(|t| t.iter().find(|t| t["type"] == "total"))
                        .and_then(|t| t["amount"].as_i64())
                        .unwrap_or(0),
                    session["currency"].as_str().unwrap_or("USD").to_lowercase(),
                ),
                _ => return Ok(None),
            }
        };
        let Some(card) = body["payment_data"]["credential"]["token"].as_str() else {
            return Ok(None);
        };
        let form = [
            ("card", card.to_owned()),
            ("amount", amount.to_string()),
            ("currency", currency),
            ("merchant_data[network_id]", network.network_id.clone()),
            ("merchant_data[name]", "Sandbox Merchant".to_owned()),
        ];
        let response = network
            .http
            .post(format!(
                "{}/v1/test_helpers/issuing/authorizations",
                network.issuer_url
            ))
            .bearer_auth(&network.issuer_key)
            .header("Idempotency-Key", format!("{key}/charge"))
            .form(&form)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_server_error() {
            return Err(format!("issuer answered {}", response.status()));
        }
        let authorization: Value = response.json().await.map_err(|e| e.to_string())?;
        Ok(Some((
            authorization["approved"] == true,
            authorization["id"].as_str().unwrap_or_default().to_owned(),
        )))
    }

    /// Sells `item_id` as `title` at `price` (minor units) from now on.
    pub fn stock(&self, item_id: &str, title: &str, price: i64) {
        self.catalogue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(item_id.to_owned(), (title.to_owned(), price));
    }

    fn catalogue(&self) -> HashMap<String, (String, i64)> {
        self.catalogue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key the sandbox signs its webhooks with (also in its profile).
    pub fn signing_key(&self) -> SigningKey {
        self.signer.public_key()
    }

    /// Sends order events to `url` from now on (and the orders placed so far, as they
    /// are now). Needs a Tokio runtime.
    pub fn deliver_webhooks_to(&self, url: impl Into<String>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let signer = self.signer.clone();
        let sign: crate::sandbox::Signer = Box::new(move |body| {
            let iat = OffsetDateTime::now_utc().unix_timestamp();
            signer.sign(body, iat).ok().map(|s| (SIGNATURE_HEADER, s))
        });
        tokio::spawn(crate::sandbox::deliver_in_order(
            url.into(),
            sign,
            receiver,
            self.deliveries.clone(),
        ));
        let mut shop = self.shop();
        for id in shop.orders.clone() {
            if let Some(entity) = shop.entities.get(&id) {
                let _ = sender.send(order_event(entity));
            }
        }
        shop.webhooks = Some(sender);
    }

    /// `Request-Signature` for `body` signed at `iat` with the sandbox's key, for tests
    /// that send their own deliveries.
    pub fn sign_webhook(&self, body: &[u8], iat: i64) -> String {
        self.signer.sign(body, iat).unwrap_or_default()
    }

    /// How many webhook deliveries the platform acknowledged with a 2xx.
    pub fn webhooks_acknowledged(&self) -> usize {
        self.deliveries.acknowledged()
    }

    /// How many webhook delivery attempts the platform did not acknowledge (each is
    /// tried again).
    pub fn webhook_attempts_not_acknowledged(&self) -> usize {
        self.deliveries.attempts_not_acknowledged()
    }

    /// Answers each completed checkout `delay` after sending its order event: the
    /// platform hears of the order before its placement call returns.
    pub fn answer_completions_after(&self, delay: Duration) {
        self.shop().completion_delay = delay;
    }

    /// The UCP order entity of an order.
    pub fn order(&self, id: &str) -> Option<Value> {
        self.shop().entities.get(id).cloned()
    }

    /// Changes an order entity and sends the new entity as an order event.
    fn change(&self, id: &str, edit: impl FnOnce(&mut Value, String)) -> Result<(), UnknownOrder> {
        let mut shop = self.shop();
        shop.next += 1;
        let log_id = format!("{}_{}", id, shop.next);
        let entity = shop
            .entities
            .get_mut(id)
            .ok_or_else(|| UnknownOrder(id.to_owned()))?;
        edit(entity, log_id);
        let event = order_event(entity);
        if let Some(webhooks) = &shop.webhooks {
            let _ = webhooks.send(event);
        }
        Ok(())
    }

    /// The whole order leaves the warehouse with this carrier and tracking number.
    /// A card-paid order's authorization is captured now.
    pub fn ship(&self, id: &str, carrier: &str, tracking_number: &str) -> Result<(), UnknownOrder> {
        let authorization = self.shop().authorizations.get(id).cloned();
        self.change(id, |order, log_id| {
            let lines = fulfil_all(order);
            push(&mut order["fulfillment"]["events"], json!({
                "id": format!("fe_{log_id}"), "occurred_at": now(), "type": "shipped",
                "line_items": lines, "carrier": carrier, "tracking_number": tracking_number,
                "tracking_url": format!("https://sandbox.shopagent.invalid/track/{tracking_number}"),
                "description": format!("Shipped with {carrier}")
            }));
        })?;
        if let Some(authorization) = authorization {
            self.settle(Settlement::Capture {
                order: id.to_owned(),
                authorization,
            });
        }
        Ok(())
    }

    /// The carrier delivered the order.
    pub fn deliver(&self, id: &str) -> Result<(), UnknownOrder> {
        self.change(id, |order, log_id| {
            let lines = fulfil_all(order);
            push(
                &mut order["fulfillment"]["events"],
                json!({
                    "id": format!("fe_{log_id}"), "occurred_at": now(), "type": "delivered",
                    "line_items": lines, "description": "Delivered to the front door"
                }),
            );
        })
    }

    /// The merchant accepts a return of the whole order; returns its RMA (the
    /// adjustment's id).
    pub fn accept_return(&self, id: &str) -> Result<String, UnknownOrder> {
        let mut rma = String::new();
        self.change(id, |order, log_id| {
            rma = format!("adj_{log_id}");
            let lines = fulfil_all(order);
            push(
                &mut order["adjustments"],
                json!({
                    "id": rma, "type": "return", "occurred_at": now(), "status": "pending",
                    "line_items": lines, "description": "Return accepted; label sent"
                }),
            );
        })?;
        Ok(rma)
    }

    /// The returned goods arrived at the merchant.
    pub fn receive_return(&self, id: &str, rma: &str) -> Result<(), UnknownOrder> {
        self.change(id, |order, _| {
            if let Some(adjustments) = order["adjustments"].as_array_mut() {
                for adjustment in adjustments.iter_mut().filter(|a| a["id"] == rma) {
                    adjustment["status"] = json!("completed");
                }
            }
        })
    }

    /// The merchant refunds `amount` (minor units), to the card when a card paid.
    pub fn refund(&self, id: &str, amount: i64) -> Result<(), UnknownOrder> {
        let mut key = String::new();
        self.change(id, |order, log_id| {
            key = format!("adj_{log_id}");
            push(&mut order["adjustments"], json!({
                "id": key, "type": "refund", "occurred_at": now(),
                "status": "completed", "amount": amount, "description": "Refund to the original payment"
            }));
        })?;
        if self.shop().authorizations.contains_key(id) {
            self.settle(Settlement::Refund {
                order: id.to_owned(),
                amount,
                key,
            });
        }
        Ok(())
    }

    pub fn set_failure_mode(&self, mode: FailureMode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    fn mode(&self) -> FailureMode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shop(&self) -> MutexGuard<'_, Shop> {
        self.shop.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every checkout call so far, oldest first.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shop().exchanges.clone()
    }

    /// Order ids the sandbox has placed, oldest first.
    pub fn orders(&self) -> Vec<String> {
        self.shop().orders.clone()
    }

    /// Applies the failure mode, then answers once per idempotency key, and records the
    /// exchange.
    async fn answer(
        &self,
        headers: &HeaderMap,
        (operation, request): (&'static str, Value),
        fingerprint: String,
        decide: impl FnOnce(&mut Shop, FailureMode) -> (StatusCode, Value),
    ) -> Response {
        let (status, body) = self.decide_once(headers, fingerprint, decide).await;
        self.shop().exchanges.push(Exchange {
            operation,
            request,
            status: status.as_u16(),
            response: body.clone(),
        });
        (status, Json(body)).into_response()
    }

    async fn decide_once(
        &self,
        headers: &HeaderMap,
        fingerprint: String,
        decide: impl FnOnce(&mut Shop, FailureMode) -> (StatusCode, Value),
    ) -> (StatusCode, Value) {
        let mode = self.mode();
        match mode {
            FailureMode::ServerError => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "requires_escalation", "messages": [{"type": "error", "code": "unavailable", "content": "try again later"}]}),
                );
            }
            FailureMode::Slow(delay) => tokio::time::sleep(delay).await,
            _ => {}
        }
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut shop = self.shop();
        if let Some((seen, status, body)) = key.as_ref().and_then(|k| shop.answers.get(k)) {
            if *seen != fingerprint {
                return (
                    StatusCode::CONFLICT,
                    error_body(
                        "idempotency_conflict",
                        "key reused with different parameters",
                    ),
                );
            }
            return (*status, body.clone());
        }
        let (status, body) = decide(&mut shop, mode);
        if let Some(key) = key {
            shop.answers
                .insert(key, (fingerprint, status, body.clone()));
        }
        (status, body)
    }
}

/// The business profile: the REST endpoint is this server itself.
async fn profile(State(merchant): State<SandboxMerchant>, headers: HeaderMap) -> Json<Value> {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({
        "ucp": {
            "version": crate::ucp::VERSION,
            "services": {"dev.ucp.shopping": {
                "version": crate::ucp::VERSION,
                "spec": "https://ucp.dev/specification/overview",
                "rest": {"schema": "https://ucp.dev/services/shopping/openapi.json", "endpoint": format!("http://{host}")}
            }},
            "capabilities": [
                {"name": "dev.ucp.shopping.checkout", "version": crate::ucp::VERSION,
                 "spec": "https://ucp.dev/specification/checkout", "schema": "https://ucp.dev/schemas/shopping/checkout.json"},
                {"name": "dev.ucp.shopping.fulfillment", "version": crate::ucp::VERSION, "extends": "dev.ucp.shopping.checkout",
                 "spec": "https://ucp.dev/specification/fulfillment", "schema": "https://ucp.dev/schemas/shopping/fulfillment.json"},
                {"name": "dev.ucp.shopping.order", "version": crate::ucp::VERSION,
                 "spec": "https://ucp.dev/specification/order", "schema": "https://ucp.dev/schemas/shopping/order.json"},
                {"name": "dev.ucp.shopping.catalog.search", "version": crate::ucp::VERSION,
                 "spec": "https://ucp.dev/specification/catalog/search", "schema": "https://ucp.dev/schemas/shopping/catalog_search.json"}
            ]
        },
        "payment": {"handlers": []},
        "signing_keys": [merchant.signing_key()]
    }))
}

/// What the sandbox's catalogue says of every item: all camping gear, in stock, from
/// one brand.
const CATALOGUE_CATEGORY: &str = "Camping";
const CATALOGUE_BRAND: &str = "Sandbox Outfitters";

/// `POST /catalog/search` (UCP catalog, REST binding): the items whose title holds every
/// word of `query` (every item without one), by id, a cursor page at a time.
async fn catalog_search(
    State(merchant): State<SandboxMerchant>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let words: Vec<String> = body["query"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let limit = body["pagination"]["limit"]
        .as_u64()
        .unwrap_or(10)
        .clamp(1, 50) as usize;
    let Some(offset) = body["pagination"]["cursor"]
        .as_str()
        .map_or(Some(0), |c| c.parse::<usize>().ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"messages": [{"type": "error", "code": "invalid_cursor", "content": "not a cursor of this catalog"}]})),
        )
            .into_response();
    };
    let mut matching: Vec<(String, (String, i64))> = merchant
        .catalogue()
        .into_iter()
        .filter(|(_, (title, _))| {
            let title = title.to_lowercase();
            words.iter().all(|w| title.contains(w.as_str()))
        })
        .collect();
    matching.sort();
    let total = matching.len();
    let products: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(id, (title, price))| {
            let url = format!("http://{host}/products/{id}");
            json!({
                "id": format!("prod_{id}"), "title": title, "brand": CATALOGUE_BRAND,
                "description": {"plain": title}, "url": url,
                "categories": [{"value": CATALOGUE_CATEGORY}],
                "price_range": {"min": {"amount": price, "currency": "USD"}, "max": {"amount": price, "currency": "USD"}},
                "variants": [{
                    "id": id, "sku": id, "title": title, "description": {"plain": title}, "url": url,
                    "price": {"amount": price, "currency": "USD"},
                    "availability": {"available": true, "status": "in_stock"}
                }]
            })
        })
        .collect();
    let next = offset + products.len();
    let mut pagination = json!({"has_next_page": next < total, "total_count": total});
    if next < total {
        pagination["cursor"] = json!(next.to_string());
    }
    Json(json!({
        "ucp": {"version": crate::ucp::VERSION, "capabilities": {"dev.ucp.shopping.catalog.search": [{"version": crate::ucp::VERSION}]}},
        "products": products,
        "pagination": pagination,
    }))
    .into_response()
}

fn error_body(code: &str, content: &str) -> Value {
    json!({"status": "requires_escalation", "messages": [{"type": "error", "code": code, "content": content, "severity": "requires_buyer_input"}]})
}

fn ucp() -> Value {
    json!({"version": crate::ucp::VERSION, "capabilities": [{"name": "dev.ucp.shopping.checkout", "version": crate::ucp::VERSION}]})
}

async fn create(
    State(merchant): State<SandboxMerchant>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let fingerprint = format!("create {body}");
    let catalogue = merchant.catalogue();
    merchant
        .answer(
            &headers,
            ("create", body.clone()),
            fingerprint,
            |shop, mode| {
                shop.next += 1;
                let id = format!("chk_{}", shop.next);
                match priced(&body, &id, &catalogue, mode) {
                    Ok(session) => {
                        shop.sessions.insert(id, session.clone());
                        (StatusCode::CREATED, session)
                    }
                    Err(refusal) => refusal,
                }
            },
        )
        .await
}

/// `PUT /checkout-sessions/{id}`: the request replaces the session's buyer, lines and
/// fulfillment; the merchant prices it again.
async fn update(
    State(merchant): State<SandboxMerchant>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let fingerprint = format!("update {id} {body}");
    let catalogue = merchant.catalogue();
    merchant
        .answer(
            &headers,
            ("update", body.clone()),
            fingerprint,
            |shop, mode| {
                match shop.sessions.get(&id).map(|s| s["status"].clone()) {
                    None => {
                        return (
                            StatusCode::NOT_FOUND,
                            error_body("not_found", "no such checkout session"),
                        );
                    }
                    Some(status) if status == "completed" || status == "canceled" => {
                        return (
                            StatusCode::CONFLICT,
                            error_body("invalid_state", "the checkout can no longer change"),
                        );
                    }
                    Some(_) => {}
                }
                if body["id"] != id.as_str() {
                    return (
                        StatusCode::BAD_REQUEST,
                        error_body("invalid_request", "the body's id is not the session's"),
                    );
                }
                let unknown_method = body["fulfillment"]["methods"]
                    .as_array()
                    .is_some_and(|methods| methods.iter().any(|m| m["id"] != "method_1"));
                if unknown_method {
                    return (
                        StatusCode::BAD_REQUEST,
                        error_body("invalid_request", "no such fulfillment method"),
                    );
                }
                match priced(&body, &id, &catalogue, mode) {
                    Ok(session) => {
                        shop.sessions.insert(id.clone(), session.clone());
                        (StatusCode::OK, session)
                    }
                    Err(refusal) => refusal,
                }
            },
        )
        .await
}

/// The session a create or update request makes: the merchant prices its own items (an
/// item it does not sell is unavailable), ships at a flat rate once there is a
/// destination, and adds 8 % sales tax; the failure mode applies.
fn priced(
    body: &Value,
    id: &str,
    catalogue: &HashMap<String, (String, i64)>,
    mode: FailureMode,
) -> Result<Value, (StatusCode, Value)> {
    let requested = body["line_items"].as_array().cloned().unwrap_or_default();
    let valid = !requested.is_empty()
        && requested
            .iter()
            .all(|l| l["item"]["id"].is_string() && l["quantity"].as_u64().is_some_and(|q| q >= 1));
    if !valid || !body["currency"].is_string() {
        return Err((
            StatusCode::BAD_REQUEST,
            error_body(
                "invalid_cart_items",
                "line items need an item id and a quantity of at least 1",
            ),
        ));
    }
    let mut line_items = Vec::new();
    let mut unknown = Vec::new();
    for (n, line) in requested.iter().enumerate() {
        let item_id = line["item"]["id"].as_str().unwrap_or_default();
        let quantity = line["quantity"].as_i64().unwrap_or(0);
        match catalogue.get(item_id) {
            Some((title, price)) => line_items.push(json!({
                "id": format!("li_{}", n + 1),
                "item": {"id": item_id, "title": title, "price": price},
                "quantity": quantity,
                "totals": [{"type": "subtotal", "amount": price * quantity}, {"type": "total", "amount": price * quantity}],
            })),
            None => unknown.push(item_id.to_owned()),
        }
    }
    let subtotal: i64 = line_items
        .iter()
        .map(|l| l["totals"][0]["amount"].as_i64().unwrap_or(0))
        .sum();
    let method = &body["fulfillment"]["methods"][0];
    let has_destination = method["destinations"][0]["postal_code"].is_string();
    let shipping = if has_destination { SHIPPING } else { 0 };
    let tax = subtotal * TAX_PERCENT / 100;
    let (status, messages) = match mode {
        _ if !unknown.is_empty() => (
            "incomplete",
            json!([{"type": "error", "code": "item_unavailable", "content": format!("not sold here: {}", unknown.join(", ")), "severity": "requires_buyer_input"}]),
        ),
        FailureMode::OutOfStock => (
            "incomplete",
            json!([{"type": "error", "code": "out_of_stock", "content": "an item sold out", "severity": "requires_buyer_input"}]),
        ),
        FailureMode::AddressRejected if has_destination => (
            "incomplete",
            json!([{"type": "error", "code": "invalid_address", "content": "we do not ship there", "severity": "requires_buyer_input"}]),
        ),
        _ if !has_destination => (
            "incomplete",
            json!([{"type": "error", "code": "missing", "path": "$.fulfillment.methods[0].destinations", "content": "a shipping destination is required", "severity": "recoverable"}]),
        ),
        _ => ("ready_for_complete", json!([])),
    };
    let mut session = json!({
        "ucp": ucp(),
        "id": id,
        "status": status,
        "messages": messages,
        "currency": body["currency"],
        "line_items": line_items,
        "totals": [{"type": "subtotal", "amount": subtotal}, {"type": "fulfillment", "amount": shipping}, {"type": "tax", "amount": tax}, {"type": "total", "amount": subtotal + shipping + tax}],
        "expires_at": (OffsetDateTime::now_utc() + time::Duration::hours(6)).format(&Rfc3339).unwrap_or_default(),
        "links": [{"type": "terms_of_service", "url": "https://sandbox.shopagent.invalid/terms"}],
        "payment": {"handlers": []},
    });
    if body["buyer"].is_object() {
        session["buyer"] = body["buyer"].clone();
    }
    if method.is_object() {
        let ids: Vec<Value> = line_items.iter().map(|l| l["id"].clone()).collect();
        let mut shipping_method =
            json!({"id": "method_1", "type": "shipping", "line_item_ids": ids});
        if has_destination {
            shipping_method["destinations"] = method["destinations"].clone();
            shipping_method["selected_destination_id"] = method["selected_destination_id"].clone();
        }
        session["fulfillment"] = json!({"methods": [shipping_method]});
    }
    Ok(session)
}

async fn read(State(merchant): State<SandboxMerchant>, Path(id): Path<String>) -> Response {
    match merchant.shop().sessions.get(&id) {
        Some(session) => Json(session.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(error_body("not_found", "no such checkout session")),
        )
            .into_response(),
    }
}

async fn complete(
    State(merchant): State<SandboxMerchant>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let fingerprint = format!("complete {id} {body}");
    let charged = match merchant.charge(&headers, &id, &body).await {
        Ok(charged) => charged,
        Err(why) => {
            tracing::warn!(%why, "sandbox merchant could not charge the card");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(error_body(
                    "payment_unavailable",
                    "the card network is unreachable",
                )),
            )
                .into_response();
        }
    };
    let answer = merchant
        .answer(&headers, ("complete", body.clone()), fingerprint, |shop, mode| {
            let Some(session) = shop.sessions.get(&id).cloned() else {
                return (StatusCode::NOT_FOUND, error_body("not_found", "no such checkout session"));
            };
            if session["status"] != "ready_for_complete" {
                return (StatusCode::CONFLICT, error_body("invalid_state", "the checkout is not ready to complete"));
            }
            if !body["payment_data"]["credential"]["token"].is_string() {
                return (StatusCode::BAD_REQUEST, error_body("payment_required", "payment_data.credential.token is required"));
            }
            if mode == FailureMode::PaymentDeclined || charged.as_ref().is_some_and(|(approved, _)| !approved) {
                let mut declined = session.clone();
                declined["status"] = json!("requires_escalation");
                declined["messages"] = json!([{"type": "error", "code": "payment_declined", "content": "the card was declined", "severity": "requires_buyer_input"}]);
                return (StatusCode::OK, declined);
            }
            let order_id = format!("ord_{}", shop.orders.len() + 1);
            shop.orders.push(order_id.clone());
            if let Some((_, authorization)) = &charged {
                shop.authorizations.insert(order_id.clone(), authorization.clone());
            }
            let permalink = format!("https://sandbox.shopagent.invalid/orders/{order_id}");
            let mut completed = session;
            completed["status"] = json!("completed");
            completed["order"] = json!({"id": order_id, "permalink_url": permalink});
            shop.sessions.insert(id.clone(), completed.clone());
            let entity = order_entity(&completed, &order_id, &permalink);
            if let Some(webhooks) = &shop.webhooks {
                let _ = webhooks.send(order_event(&entity));
            }
            shop.entities.insert(order_id, entity);
            (StatusCode::OK, completed)
        })
        .await;
    let delay = merchant.shop().completion_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    answer
}

async fn cancel(
    State(merchant): State<SandboxMerchant>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    merchant
        .answer(
            &headers,
            ("cancel", Value::Null),
            format!("cancel {id}"),
            |shop, _| match shop.sessions.get_mut(&id) {
                Some(session) if session["status"] != "completed" => {
                    session["status"] = json!("canceled");
                    (StatusCode::OK, session.clone())
                }
                Some(_) => (
                    StatusCode::CONFLICT,
                    error_body("invalid_state", "a completed checkout cannot be canceled"),
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    error_body("not_found", "no such checkout session"),
                ),
            },
        )
        .await
}

/// The UCP order entity of a completed checkout session.
fn order_entity(session: &Value, order_id: &str, permalink: &str) -> Value {
    let line_items: Vec<Value> = session["line_items"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|line| {
                    let quantity = line["quantity"].as_i64().unwrap_or(0);
                    let amount = line["item"]["price"].as_i64().unwrap_or(0) * quantity;
                    json!({
                        "id": line["id"], "item": line["item"],
                        "quantity": {"total": quantity, "fulfilled": 0},
                        "totals": [{"type": "subtotal", "amount": amount}, {"type": "total", "amount": amount}],
                        "status": "processing"
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "ucp": {"version": crate::ucp::VERSION, "capabilities": [{"name": "dev.ucp.shopping.order", "version": crate::ucp::VERSION}]},
        "id": order_id,
        "checkout_id": session["id"],
        "permalink_url": permalink,
        "line_items": line_items,
        "fulfillment": {"expectations": [], "events": []},
        "adjustments": [],
        "totals": session["totals"],
    })
}

impl crate::Sandbox for SandboxMerchant {
    const NAME: &'static str = "merchant";

    fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/ucp", axum::routing::get(profile))
            .route("/checkout-sessions", post(create))
            .route(
                "/checkout-sessions/{id}",
                axum::routing::get(read).put(update),
            )
            .route("/checkout-sessions/{id}/complete", post(complete))
            .route("/checkout-sessions/{id}/cancel", post(cancel))
            .route("/catalog/search", post(catalog_search))
            .with_state(self.clone())
    }
}
