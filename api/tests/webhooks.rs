//! The card issuer's webhooks over HTTP: the real-time authorization (signatures,
//! replays, the Payment rules deciding) and the transactions that capture and refund.

mod common;

use common::{Backend, TestApp, spawn_app_configured};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use shopagent::auth::Role;
use shopagent_commands::CommandBus;
use shopagent_domain::EventMetadata;
use shopagent_domain::ids::{MerchantId, OrderId, PaymentId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::payment::{
    CardReference, DeclineReason, Payment, PaymentCommand, PaymentEvent,
};
use time::OffsetDateTime;

const SECRET: &str = "whsec_test_secret";
const CARD: &str = "ic_sandboxCardForWebhooks";

on_both_backends!(
    an_authorization_within_the_rules_is_approved_once,
    a_bad_signature_stores_nothing,
    the_rules_decline_with_the_reason_recorded,
    webhooks_are_off_without_a_secret,
    captures_and_refunds_are_recorded_once_per_transaction,
);

fn sign(body: &str, secret: &str, at: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{at}.{body}").as_bytes());
    format!("t={at},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A payment with an issued card capped at 1260 and locked to acme (acceptor 1234567890).
async fn issued_payment(app: &TestApp) -> String {
    let ops = app.token("acme", "ops", Role::Ops, None);
    let merchant = json!({"merchant_id": "acme", "name": "Acme", "protocol": "ucp", "api_endpoint": "https://acme.example/ucp", "paths": ["api"], "card_acceptor_ids": ["1234567890"]});
    assert_eq!(
        app.post("/v1/merchants", &ops, merchant).await.status,
        StatusCode::CREATED
    );
    let payments = CommandBus::<Payment>::new(app.store.clone());
    let payment_id = PaymentId::new();
    let stream = format!("acme/{payment_id}");
    let now = OffsetDateTime::now_utc();
    let request = PaymentCommand::RequestCard {
        payment_id,
        order_id: OrderId::new(),
        shopper: "alice".into(),
        mandate_id: None,
        merchant: MerchantId::parse("acme").expect("merchant"),
        cap: Money::new(1_260, Currency::parse("USD").expect("USD")),
        at: now,
    };
    payments
        .execute(&stream, request, EventMetadata::new("acme", "test"))
        .await
        .expect("request card");
    let issued = PaymentCommand::RecordCardIssued {
        card: CardReference::parse(CARD).expect("card"),
        display: None,
        expires_at: now + time::Duration::days(1),
        at: now,
    };
    payments
        .execute(&stream, issued, EventMetadata::new("acme", "test"))
        .await
        .expect("issue card");
    stream
}

/// An `issuing_authorization.request` event shaped after Stripe's.
fn authorization_event(
    event_id: &str,
    authorization_id: &str,
    payment: &str,
    amount: i64,
    network_id: &str,
) -> String {
    json!({
        "id": event_id,
        "object": "event",
        "type": "issuing_authorization.request",
        "data": {"object": {
            "id": authorization_id,
            "object": "issuing.authorization",
            "amount": 0,
            "currency": "usd",
            "approved": false,
            "status": "pending",
            "card": {"id": CARD, "object": "issuing.card", "metadata": {"payment": payment}},
            "merchant_data": {"name": "Acme Outdoor", "network_id": network_id, "category_code": "5941"},
            "pending_request": {"amount": amount, "currency": "usd", "is_amount_controllable": false}
        }}
    })
    .to_string()
}

async fn deliver(app: &TestApp, body: &str, signature: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .expect("deliver");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn authorizations(app: &TestApp, payment: &str) -> Vec<bool> {
    let (payment, _) = CommandBus::<Payment>::new(app.store.clone())
        .load(payment)
        .await
        .expect("payment");
    payment
        .authorizations
        .values()
        .map(|(_, approved)| *approved)
        .collect()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

async fn an_authorization_within_the_rules_is_approved_once(backend: Backend) {
    let app = spawn_app_configured(backend, None, Some(SECRET)).await;
    let payment = issued_payment(&app).await;
    let body = authorization_event("evt_1", "iauth_1", &payment, 1_200, "1234567890");
    // The 2-second answer budget is a speed target, not asserted here (see PERFORMANCE.md).
    let (status, answer) = deliver(&app, &body, &sign(&body, SECRET, now())).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"approved": true}))
    );
    // Stripe redelivers: same answer, no second decision.
    let (status, answer) = deliver(&app, &body, &sign(&body, SECRET, now())).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"approved": true}))
    );
    assert_eq!(authorizations(&app, &payment).await, vec![true]);
    // The card is single-use: a second authorization is declined.
    let second = authorization_event("evt_2", "iauth_2", &payment, 100, "1234567890");
    let (_, answer) = deliver(&app, &second, &sign(&second, SECRET, now())).await;
    assert_eq!(answer, json!({"approved": false}));
    app.stop().await;
}

async fn a_bad_signature_stores_nothing(backend: Backend) {
    let app = spawn_app_configured(backend, None, Some(SECRET)).await;
    let payment = issued_payment(&app).await;
    let body = authorization_event("evt_1", "iauth_1", &payment, 1_200, "1234567890");
    let tampered = body.replace("1200", "1");
    for (body, signature) in [
        (tampered.as_str(), sign(&body, SECRET, now())),
        (body.as_str(), sign(&body, "whsec_wrong", now())),
        (body.as_str(), sign(&body, SECRET, now() - 301)),
        (body.as_str(), "garbage".to_owned()),
    ] {
        let (status, problem) = deliver(&app, body, &signature).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem:?}");
        assert_eq!(problem["code"], "invalid_signature");
    }
    assert!(
        authorizations(&app, &payment).await.is_empty(),
        "nothing decided"
    );
    app.stop().await;
}

async fn the_rules_decline_with_the_reason_recorded(backend: Backend) {
    let app = spawn_app_configured(backend, None, Some(SECRET)).await;
    let payment = issued_payment(&app).await;
    let over_cap = authorization_event("evt_1", "iauth_1", &payment, 1_261, "1234567890");
    let (_, answer) = deliver(&app, &over_cap, &sign(&over_cap, SECRET, now())).await;
    assert_eq!(answer, json!({"approved": false}));
    let elsewhere = authorization_event("evt_2", "iauth_2", &payment, 100, "999");
    let (_, answer) = deliver(&app, &elsewhere, &sign(&elsewhere, SECRET, now())).await;
    assert_eq!(answer, json!({"approved": false}));
    let unknown = authorization_event(
        "evt_3",
        "iauth_3",
        "acme/00000000-0000-0000-0000-000000000009",
        100,
        "1234567890",
    );
    let (_, answer) = deliver(&app, &unknown, &sign(&unknown, SECRET, now())).await;
    assert_eq!(answer, json!({"approved": false}));
    assert_eq!(authorizations(&app, &payment).await, vec![false, false]);
    let history = CommandBus::<Payment>::new(app.store.clone())
        .events(&payment)
        .await
        .expect("events");
    let reasons: Vec<DeclineReason> = history
        .into_iter()
        .filter_map(|event| match event {
            PaymentEvent::AuthorizationDeclined { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [DeclineReason::OverCap, DeclineReason::MerchantMismatch]
    );
    app.stop().await;
}

async fn webhooks_are_off_without_a_secret(backend: Backend) {
    let app = spawn_app_configured(backend, None, None).await;
    let body = authorization_event("evt_1", "iauth_1", "acme/x", 1, "1");
    let (status, _) = deliver(&app, &body, &sign(&body, SECRET, now())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

/// An `issuing_transaction.created` event shaped after Stripe's.
fn transaction_event(transaction_id: &str, kind: &str, amount: i64, card: &str) -> String {
    json!({
        "id": format!("evt_{transaction_id}"),
        "object": "event",
        "type": "issuing_transaction.created",
        "data": {"object": {
            "id": transaction_id,
            "object": "issuing.transaction",
            "type": kind,
            "amount": amount,
            "currency": "usd",
            "authorization": "iauth_1",
            "card": card,
            "merchant_data": {"name": "Acme Outdoor", "network_id": "1234567890"}
        }}
    })
    .to_string()
}

/// Delivers until the answer is not 503 (reconciliation learning of the card), as the
/// issuer retries.
async fn deliver_until_known(app: &TestApp, body: &str) -> (StatusCode, Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = deliver(app, body, &sign(body, SECRET, now())).await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn captures_and_refunds_are_recorded_once_per_transaction(backend: Backend) {
    let app = spawn_app_configured(backend, None, Some(SECRET)).await;
    let payment = issued_payment(&app).await;
    let body = authorization_event("evt_1", "iauth_1", &payment, 1_200, "1234567890");
    let (_, answer) = deliver(&app, &body, &sign(&body, SECRET, now())).await;
    assert_eq!(answer, json!({"approved": true}));

    // A card nobody issued: not ours yet, so the issuer must retry.
    let stranger = transaction_event("ipi_stranger", "capture", -1_200, "ic_unknownCard");
    let response = app
        .client
        .post(app.url("/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", sign(&stranger, SECRET, now()))
        .body(stranger)
        .send()
        .await
        .expect("deliver");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());

    let capture = transaction_event("ipi_capture", "capture", -1_200, CARD);
    let refund = transaction_event("ipi_refund", "refund", 200, CARD);
    for body in [&capture, &capture, &refund, &refund] {
        let (status, answer) = deliver_until_known(&app, body).await;
        assert_eq!(
            (status, answer),
            (StatusCode::OK, json!({"received": true}))
        );
    }
    let (recorded, _) = CommandBus::<Payment>::new(app.store.clone())
        .load(&payment)
        .await
        .expect("payment");
    assert_eq!(
        (recorded.captured_minor, recorded.refunded_minor),
        (1_200, 200)
    );
    assert_eq!((recorded.captures.len(), recorded.refunds.len()), (1, 1));
    app.stop().await;
}
