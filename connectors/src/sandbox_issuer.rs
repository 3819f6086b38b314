//! A sandbox card issuer speaking the Stripe Issuing shapes the connector uses: create a
//! virtual card, cancel it, read it back. Cards live in memory; requests need the
//! configured secret key and honour `Idempotency-Key` as Stripe does. It never returns a
//! card number, only `last4`.
//!
//! A merchant charges a card through Stripe's test helper
//! (`POST /v1/test_helpers/issuing/authorizations`): the sandbox sends the platform the
//! real-time `issuing_authorization.request` webhook, signed with `Stripe-Signature`,
//! and the platform's answer approves or declines. A platform that does not answer
//! declines, as Stripe's default does.
//!
//! The merchant then captures the authorization
//! (`POST /v1/test_helpers/issuing/authorizations/{id}/capture`) and may refund the
//! capture (`POST /v1/test_helpers/issuing/transactions/{id}/refund`). Each makes an
//! `issuing.transaction` (a capture's amount is negative, as money leaving the
//! balance; a refund's positive), which the sandbox sends the platform as an
//! `issuing_transaction.created` event, in order, retried until acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{Value, json};
use time::OffsetDateTime;

#[derive(Debug, Default)]
struct Ledger {
    cards: HashMap<String, Value>,
    authorizations: Vec<Value>,
    transactions: Vec<Value>,
    /// Where transaction events go, once the platform is known.
    events: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
    /// Where authorization requests go.
    webhook: Option<PlatformWebhook>,
    /// Idempotency key → (request fingerprint, answer).
    answers: HashMap<String, (String, StatusCode, Value)>,
}

/// Where the platform decides authorizations: its URL, the secret requests are signed
/// with, and one client for all of them, so requests reuse its connections.
#[derive(Debug, Clone)]
struct PlatformWebhook {
    url: String,
    secret: String,
    http: reqwest::Client,
}

/// The sandbox's state, shared by its handlers and inspectable by tests.
#[derive(Debug, Clone)]
pub struct SandboxIssuer {
    api_key: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl SandboxIssuer {
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            ledger: Arc::default(),
        }
    }

    /// Sends authorization requests and transaction events to `url`, signed with
    /// `secret` (`whsec_…`). Needs a Tokio runtime.
    pub fn deliver_authorizations_to(&self, url: impl Into<String>, secret: impl Into<String>) {
        let (url, secret) = (url.into(), secret.into());
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let signing_secret = secret.clone();
        let sign: crate::sandbox::Signer = Box::new(move |body| {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            Some((
                "stripe-signature",
                stripe_signature(&signing_secret, &String::from_utf8_lossy(body), now),
            ))
        });
        tokio::spawn(crate::sandbox::deliver_in_order(
            url.clone(),
            sign,
            receiver,
            Arc::default(),
        ));
        let mut ledger = self.ledger();
        ledger.webhook = Some(PlatformWebhook {
            url,
            secret,
            http: reqwest::Client::new(),
        });
        ledger.events = Some(sender);
    }

    /// Every capture and refund so far, oldest first.
    pub fn transactions(&self) -> Vec<Value> {
        self.ledger().transactions.clone()
    }

    /// Every authorization decided so far, oldest first.
    pub fn authorizations(&self) -> Vec<Value> {
        self.ledger().authorizations.clone()
    }

    /// A card as the sandbox holds it.
    pub fn card(&self, id: &str) -> Option<Value> {
        self.ledger().cards.get(id).cloned()
    }

    /// Ids of every card issued.
    pub fn card_ids(&self) -> Vec<String> {
        self.ledger().cards.keys().cloned().collect()
    }

    /// How many cards were issued.
    pub fn cards_issued(&self) -> usize {
        self.ledger().cards.len()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|key| key == self.api_key)
    }

    /// Runs `answer` once per idempotency key; a replay returns the first answer, a key
    /// reused with other parameters is an error (as Stripe does).
    fn once(
        &self,
        headers: &HeaderMap,
        fingerprint: String,
        answer: impl FnOnce(&mut Ledger) -> (StatusCode, Value),
    ) -> Response {
        if !self.authorized(headers) {
            return unauthorized();
        }
        let key = idempotency_key(headers);
        let mut ledger = self.ledger();
        if let Some(replay) = replay(&ledger, key.as_deref(), &fingerprint) {
            return replay;
        }
        let (status, body) = answer(&mut ledger);
        if let Some(key) = key {
            ledger
                .answers
                .insert(key, (fingerprint, status, body.clone()));
        }
        (status, Json(body)).into_response()
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The stored answer to a key seen before, or Stripe's error when it came with other
/// parameters; `None` for a new key.
fn replay(ledger: &Ledger, key: Option<&str>, fingerprint: &str) -> Option<Response> {
    let (seen, status, body) = ledger.answers.get(key?)?;
    Some(if seen == fingerprint {
        (*status, Json(body.clone())).into_response()
    } else {
        error(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
        )
    })
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Invalid API Key provided",
    )
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn fingerprint(path: &str, form: &HashMap<String, String>) -> String {
    let mut fields: Vec<_> = form.iter().collect();
    fields.sort();
    format!("{path}?{fields:?}")
}

fn card_id() -> String {
    stripe_id("ic")
}

/// `{prefix}_` and 24 letters: like Stripe's ids, and never a run of digits.
fn stripe_id(prefix: &str) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let bytes = [
        uuid::Uuid::new_v4().into_bytes(),
        uuid::Uuid::new_v4().into_bytes(),
    ]
    .concat();
    let id: String = bytes
        .iter()
        .take(24)
        .map(|b| LETTERS[usize::from(*b) % LETTERS.len()] as char)
        .collect();
    format!("{prefix}_{id}")
}

/// Records a transaction and sends it to the platform as `issuing_transaction.created`.
fn record_transaction(ledger: &mut Ledger, transaction: &Value) {
    ledger.transactions.push(transaction.clone());
    if let Some(events) = &ledger.events {
        let _ = events.send(json!({
            "id": stripe_id("evt"),
            "object": "event",
            "type": "issuing_transaction.created",
            "created": OffsetDateTime::now_utc().unix_timestamp(),
            "livemode": false,
            "data": {"object": transaction},
        }));
    }
}

fn transaction(kind: &str, amount: i64, authorization: &Value, card: &str) -> Value {
    json!({
        "id": stripe_id("ipi"),
        "object": "issuing.transaction",
        "type": kind,
        "amount": amount,
        "currency": authorization["currency"],
        "authorization": authorization["id"],
        "card": card,
        "created": OffsetDateTime::now_utc().unix_timestamp(),
        "livemode": false,
        "merchant_data": authorization["merchant_data"],
    })
}

/// Captures an approved authorization, in full or `capture_amount`; answers the
/// authorization, now closed.
async fn test_capture(
    State(issuer): State<SandboxIssuer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let print = fingerprint(&format!("capture {id}"), &form);
    issuer.once(&headers, print, |ledger| {
        let Some(index) = ledger.authorizations.iter().position(|a| a["id"] == id.as_str()) else {
            return (StatusCode::NOT_FOUND, json!({"error": {"type": "invalid_request_error", "message": format!("No such issuing authorization: '{id}'")}}));
        };
        let authorization = ledger.authorizations[index].clone();
        if authorization["approved"] != true || authorization["status"] != "pending" {
            return (StatusCode::BAD_REQUEST, json!({"error": {"type": "invalid_request_error", "message": "This authorization cannot be captured."}}));
        }
        let amount = form
            .get("capture_amount")
            .and_then(|a| a.parse::<i64>().ok())
            .unwrap_or_else(|| authorization["amount"].as_i64().unwrap_or(0));
        let card = authorization["card"]["id"].as_str().unwrap_or_default().to_owned();
        let capture = transaction("capture", -amount, &authorization, &card);
        ledger.authorizations[index]["status"] = json!("closed");
        ledger.authorizations[index]["transactions"] = json!([capture]);
        record_transaction(ledger, &capture);
        (StatusCode::OK, ledger.authorizations[index].clone())
    })
}

/// Refunds `refund_amount` (default: all) of a capture; answers the refund transaction.
async fn test_refund(
    State(issuer): State<SandboxIssuer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let print = fingerprint(&format!("refund {id}"), &form);
    issuer.once(&headers, print, |ledger| {
        let Some(capture) = ledger.transactions.iter().find(|t| t["id"] == id.as_str() && t["type"] == "capture").cloned() else {
            return (StatusCode::NOT_FOUND, json!({"error": {"type": "invalid_request_error", "message": format!("No such issuing transaction: '{id}'")}}));
        };
        let amount = form
            .get("refund_amount")
            .and_then(|a| a.parse::<i64>().ok())
            .unwrap_or_else(|| -capture["amount"].as_i64().unwrap_or(0));
        let authorization = json!({
            "id": capture["authorization"], "currency": capture["currency"],
            "merchant_data": capture["merchant_data"],
        });
        let card = capture["card"].as_str().unwrap_or_default().to_owned();
        let refund = transaction("refund", amount, &authorization, &card);
        record_transaction(ledger, &refund);
        (StatusCode::OK, refund)
    })
}

async fn create(
    State(issuer): State<SandboxIssuer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let print = fingerprint("/v1/issuing/cards", &form);
    issuer.once(&headers, print, |ledger| {
        let field = |name: &str| form.get(name).map(String::as_str);
        let amount = field("spending_controls[spending_limits][0][amount]").and_then(|a| a.parse::<i64>().ok());
        let valid = field("cardholder").is_some_and(|c| c.starts_with("ich_"))
            && field("type") == Some("virtual")
            && field("currency").is_some_and(|c| c.len() == 3)
            && amount.is_some_and(|a| a > 0);
        if !valid {
            return (StatusCode::BAD_REQUEST, json!({"error": {"type": "invalid_request_error", "message": "cardholder (ich_…), type=virtual, currency and a positive spending limit are required"}}));
        }
        let expires = OffsetDateTime::now_utc() + time::Duration::days(31);
        let id = card_id();
        let metadata: serde_json::Map<String, Value> = form
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(), Value::from(v.clone()))))
            .collect();
        let card = json!({
            "id": id,
            "object": "issuing.card",
            "brand": "Visa",
            "cardholder": {"id": field("cardholder"), "object": "issuing.cardholder"},
            "created": OffsetDateTime::now_utc().unix_timestamp(),
            "currency": field("currency"),
            "exp_month": u8::from(expires.month()),
            "exp_year": expires.year(),
            "last4": "4242",
            "livemode": false,
            "metadata": metadata,
            "spending_controls": {"spending_limits": [{"amount": amount, "interval": field("spending_controls[spending_limits][0][interval]").unwrap_or("all_time")}]},
            "status": field("status").unwrap_or("inactive"),
            "type": "virtual",
        });
        ledger.cards.insert(id, card.clone());
        (StatusCode::OK, card)
    })
}

async fn update(
    State(issuer): State<SandboxIssuer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let print = fingerprint(&format!("/v1/issuing/cards/{id}"), &form);
    issuer.once(&headers, print, |ledger| {
        let Some(card) = ledger.cards.get_mut(&id) else {
            return (StatusCode::NOT_FOUND, json!({"error": {"type": "invalid_request_error", "message": format!("No such issuing card: '{id}'")}}));
        };
        if let Some(status) = form.get("status") {
            if card["status"] == "canceled" && status != "canceled" {
                return (StatusCode::BAD_REQUEST, json!({"error": {"type": "invalid_request_error", "message": "A canceled card cannot be reactivated."}}));
            }
            card["status"] = Value::from(status.clone());
        }
        (StatusCode::OK, card.clone())
    })
}

async fn read(
    State(issuer): State<SandboxIssuer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !issuer.authorized(&headers) {
        return unauthorized();
    }
    match issuer.card(&id) {
        Some(card) => Json(card).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "No such issuing card",
        ),
    }
}

/// `Stripe-Signature` for `body` at `timestamp` (Unix seconds).
pub fn stripe_signature(secret: &str, body: &str, timestamp: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Asks the platform to decide an authorization; no answer, or an unreadable one, is a
/// decline.
async fn ask_platform(platform: &PlatformWebhook, authorization: &Value) -> bool {
    let event = json!({
        "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "type": "issuing_authorization.request",
        "created": OffsetDateTime::now_utc().unix_timestamp(),
        "livemode": false,
        "data": {"object": authorization},
    })
    .to_string();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let signature = stripe_signature(&platform.secret, &event, now);
    let answer = platform
        .http
        .post(&platform.url)
        .header("stripe-signature", signature)
        .header("content-type", "application/json")
        .body(event)
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => response
            .json::<Value>()
            .await
            .is_ok_and(|body| body["approved"] == true),
        _ => false,
    }
}

async fn test_authorization(
    State(issuer): State<SandboxIssuer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !issuer.authorized(&headers) {
        return unauthorized();
    }
    let print = fingerprint("/v1/test_helpers/issuing/authorizations", &form);
    let key = idempotency_key(&headers);
    if let Some(replay) = replay(&issuer.ledger(), key.as_deref(), &print) {
        return replay;
    }
    let field = |name: &str| form.get(name).cloned();
    let (Some(card_id), Some(amount)) = (
        field("card"),
        field("amount").and_then(|a| a.parse::<i64>().ok()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "card and amount are required",
        );
    };
    let Some(card) = issuer.card(&card_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("No such issuing card: '{card_id}'"),
        );
    };
    let currency =
        field("currency").unwrap_or_else(|| card["currency"].as_str().unwrap_or("usd").to_owned());
    let mut authorization = json!({
        "id": format!("iauth_{}", uuid::Uuid::new_v4().simple()),
        "object": "issuing.authorization",
        "amount": 0,
        "approved": false,
        "card": {"id": card["id"], "object": "issuing.card", "metadata": card["metadata"], "status": card["status"]},
        "created": OffsetDateTime::now_utc().unix_timestamp(),
        "currency": currency,
        "livemode": false,
        "merchant_data": {"network_id": field("merchant_data[network_id]"), "name": field("merchant_data[name]")},
        "pending_request": {"amount": amount, "currency": currency, "is_amount_controllable": false},
        "status": "pending",
    });
    let webhook = issuer.ledger().webhook.clone();
    let approved = card["status"] == "active"
        && match webhook {
            Some(platform) => ask_platform(&platform, &authorization).await,
            None => card["spending_controls"]["spending_limits"][0]["amount"]
                .as_i64()
                .is_some_and(|cap| amount <= cap),
        };
    authorization["approved"] = json!(approved);
    authorization["amount"] = json!(if approved { amount } else { 0 });
    authorization["status"] = json!(if approved { "pending" } else { "closed" });
    authorization["pending_request"] = Value::Null;
    let mut ledger = issuer.ledger();
    ledger.authorizations.push(authorization.clone());
    if let Some(key) = key {
        ledger
            .answers
            .insert(key, (print, StatusCode::OK, authorization.clone()));
    }
    (StatusCode::OK, Json(authorization)).into_response()
}

impl crate::Sandbox for SandboxIssuer {
    const NAME: &'static str = "issuer";

    fn router(&self) -> Router {
        Router::new()
            .route(
                "/v1/test_helpers/issuing/authorizations",
                post(test_authorization),
            )
            .route(
                "/v1/test_helpers/issuing/authorizations/{id}/capture",
                post(test_capture),
            )
            .route(
                "/v1/test_helpers/issuing/transactions/{id}/refund",
                post(test_refund),
            )
            .route(
                "/v1/issuing/cards",
                post(create).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
            )
            .route("/v1/issuing/cards/{id}", post(update).get(read))
            .with_state(self.clone())
    }
}
