//! A sandbox UCP merchant: the checkout-session endpoints of the UCP REST binding over an
//! in-memory store, honouring `Idempotency-Key` as the spec requires (same key and body →
//! the stored answer; same key, other body → 409), with failure modes that can be
//! switched on: out of stock, address rejected, payment declined, slow, 5xx.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

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
    next: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SandboxMerchant {
    shop: Arc<Mutex<Shop>>,
    mode: Arc<Mutex<FailureMode>>,
}

impl SandboxMerchant {
    pub fn new() -> Self {
        Self::default()
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

    /// Order ids the sandbox has placed, oldest first.
    pub fn orders(&self) -> Vec<String> {
        self.shop().orders.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/ucp", axum::routing::get(profile))
            .route("/checkout-sessions", post(create))
            .route("/checkout-sessions/{id}", axum::routing::get(read))
            .route("/checkout-sessions/{id}/complete", post(complete))
            .route("/checkout-sessions/{id}/cancel", post(cancel))
            .with_state(self.clone())
    }

    /// Serves on a free loopback port; returns the UCP endpoint URL.
    pub async fn spawn(&self) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let router = self.router();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "sandbox merchant stopped");
            }
        });
        Ok((url, task))
    }

    /// Applies the failure mode, then answers once per idempotency key.
    async fn answer(
        &self,
        headers: &HeaderMap,
        fingerprint: String,
        decide: impl FnOnce(&mut Shop, FailureMode) -> (StatusCode, Value),
    ) -> Response {
        let mode = self.mode();
        match mode {
            FailureMode::ServerError => return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "requires_escalation", "messages": [{"type": "error", "code": "unavailable", "content": "try again later"}]}))).into_response(),
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
                    Json(error_body(
                        "idempotency_conflict",
                        "key reused with different parameters",
                    )),
                )
                    .into_response();
            }
            return (*status, Json(body.clone())).into_response();
        }
        let (status, body) = decide(&mut shop, mode);
        if let Some(key) = key {
            shop.answers
                .insert(key, (fingerprint, status, body.clone()));
        }
        (status, Json(body)).into_response()
    }
}

/// The business profile: the REST endpoint is this server itself.
async fn profile(headers: HeaderMap) -> Json<Value> {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({
        "ucp": {
            "version": crate::ucp::VERSION,
            "services": {"dev.ucp.shopping": {"version": crate::ucp::VERSION, "rest": {"endpoint": format!("http://{host}")}}},
            "capabilities": [
                {"name": "dev.ucp.shopping.checkout", "version": crate::ucp::VERSION},
                {"name": "dev.ucp.shopping.fulfillment", "version": crate::ucp::VERSION, "extends": "dev.ucp.shopping.checkout"}
            ]
        },
        "payment": {"handlers": []}
    }))
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
    merchant
        .answer(&headers, fingerprint, |shop, mode| {
            let items = body["line_items"].as_array().cloned().unwrap_or_default();
            let valid = !items.is_empty()
                && items.iter().all(|l| l["item"]["id"].is_string() && l["item"]["price"].as_i64().is_some_and(|p| p > 0) && l["quantity"].as_u64().is_some_and(|q| q >= 1));
            if !valid || !body["currency"].is_string() {
                return (StatusCode::BAD_REQUEST, error_body("invalid_cart_items", "line items need an item id, a positive price and a quantity"));
            }
            shop.next += 1;
            let id = format!("chk_{}", shop.next);
            let subtotal: i64 = items.iter().map(|l| l["item"]["price"].as_i64().unwrap_or(0) * l["quantity"].as_i64().unwrap_or(0)).sum();
            let has_destination = body["fulfillment"]["methods"][0]["destinations"][0]["postal_code"].is_string();
            let (status, messages) = match mode {
                FailureMode::OutOfStock => ("incomplete", json!([{"type": "error", "code": "out_of_stock", "content": "an item sold out", "severity": "requires_buyer_input"}])),
                FailureMode::AddressRejected => ("incomplete", json!([{"type": "error", "code": "invalid_address", "content": "we do not ship there", "severity": "requires_buyer_input"}])),
                _ if !has_destination => ("incomplete", json!([{"type": "error", "code": "missing", "path": "$.fulfillment", "content": "a shipping destination is required", "severity": "recoverable"}])),
                _ => ("ready_for_complete", json!([])),
            };
            let session = json!({
                "ucp": ucp(),
                "id": id,
                "status": status,
                "messages": messages,
                "currency": body["currency"],
                "line_items": items,
                "totals": [{"type": "subtotal", "amount": subtotal}, {"type": "total", "amount": subtotal}],
                "links": [{"type": "terms_of_service", "url": "https://sandbox.shopagent.invalid/terms"}],
                "payment": {"handlers": []},
            });
            shop.sessions.insert(id, session.clone());
            (StatusCode::CREATED, session)
        })
        .await
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
    merchant
        .answer(&headers, fingerprint, |shop, mode| {
            let Some(session) = shop.sessions.get(&id).cloned() else {
                return (StatusCode::NOT_FOUND, error_body("not_found", "no such checkout session"));
            };
            if session["status"] != "ready_for_complete" {
                return (StatusCode::CONFLICT, error_body("invalid_state", "the checkout is not ready to complete"));
            }
            if !body["payment_data"]["credential"]["token"].is_string() {
                return (StatusCode::BAD_REQUEST, error_body("payment_required", "payment_data.credential.token is required"));
            }
            if mode == FailureMode::PaymentDeclined {
                let mut declined = session.clone();
                declined["status"] = json!("requires_escalation");
                declined["messages"] = json!([{"type": "error", "code": "payment_declined", "content": "the card was declined", "severity": "requires_buyer_input"}]);
                return (StatusCode::OK, declined);
            }
            let order_id = format!("ord_{}", shop.orders.len() + 1);
            shop.orders.push(order_id.clone());
            let mut completed = session;
            completed["status"] = json!("completed");
            completed["order"] = json!({"id": order_id, "permalink_url": format!("https://sandbox.shopagent.invalid/orders/{order_id}")});
            shop.sessions.insert(id.clone(), completed.clone());
            (StatusCode::OK, completed)
        })
        .await
}

async fn cancel(
    State(merchant): State<SandboxMerchant>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    merchant
        .answer(&headers, format!("cancel {id}"), |shop, _| {
            match shop.sessions.get_mut(&id) {
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
            }
        })
        .await
}
