//! Inbound webhooks. They authenticate by signature, not by bearer token.
//!
//! `POST /v1/webhooks/stripe` answers the card issuer's real-time authorization request
//! (`issuing_authorization.request`) from the Payment rules: amount within the cap,
//! the merchant the card is locked to, card unused, mandate not revoked, card not
//! expired. The signature (`Stripe-Signature: t=…,v1=…`, HMAC-SHA256 over `t.body`)
//! is checked over the raw body with a 5-minute tolerance; a failure answers 401 and
//! stores nothing. A redelivered event gets the first answer again, with no second
//! decision. The same endpoint takes `issuing_transaction.created`: a capture or a
//! refund on a card, recorded on its payment once per transaction id however often it
//! is delivered. The card names the payment through the reconciliation read model; a
//! card it does not know yet answers 503 with `Retry-After`.
//!
//! `POST /v1/webhooks/ucp/{tenant}/{merchant}` takes a UCP merchant's order events (the
//! platform URL given to the merchant at onboarding names the tenant and the merchant).
//! The `Request-Signature` (a detached JWS with `iat`) must verify against a key in the
//! merchant's own `/.well-known/ucp` profile, found from its registry entry; otherwise
//! 401 and nothing is stored. The order entity's fulfillment events and adjustments
//! become order commands, each applied once however often it is delivered. An event for
//! an order the orders hub does not know yet (the merchant can be faster than the
//! checkout process records the placement) answers 503 with `Retry-After`, and the
//! merchant, which must retry, delivers it again.
//!
//! `POST /v1/webhooks/easypost/{tenant}` takes carrier tracking events (EasyPost
//! `tracker.updated`), verified with `X-Hmac-Signature` over the raw body and the
//! event's signed `updated_at` within five minutes. The tracking number finds the
//! order; out for delivery, delivered and delivery exceptions are applied to it once.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use shopagent_domain::ids::{AuthorizationId, MerchantId, RefundId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::payment::PaymentCommand;
use shopagent_domain::{EventMetadata, IdempotencyKey};
use time::OffsetDateTime;
use uuid::Uuid;

use super::merchants::merchant_stream_in;
use crate::problem::Problem;
use crate::server::App;

/// Signed timestamps older or newer than this are refused (replay protection).
pub const TOLERANCE: Duration = Duration::from_secs(300);
const AUTHORIZATION_NAMESPACE: Uuid = Uuid::from_u128(0x2b1e_64c4_0d1f_4a8c_b6a3_9e57_71c2_04ad);

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/webhooks/stripe", post(stripe))
        .route(
            "/v1/webhooks/ucp/{tenant}/{merchant}",
            post(ucp_order_event),
        )
        .route("/v1/webhooks/easypost/{tenant}", post(tracking_event))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing or malformed Stripe-Signature header")]
    Malformed,
    #[error("signature timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// Verifies a `Stripe-Signature` header over `body` at time `now` (Unix seconds).
pub fn verify_stripe_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > TOLERANCE.as_secs() {
        return Err(SignatureError::Stale);
    }
    for signature in signatures {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Malformed)?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[derive(Debug, Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Authorization {
    id: String,
    card: AuthorizationCard,
    merchant_data: MerchantData,
    pending_request: Option<PendingRequest>,
    #[serde(default)]
    amount: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct AuthorizationCard {
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct MerchantData {
    #[serde(default)]
    network_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PendingRequest {
    amount: i64,
    currency: String,
}

fn decision(approved: bool) -> Response {
    let mut response =
        (StatusCode::OK, axum::Json(json!({ "approved": approved }))).into_response();
    response
        .headers_mut()
        .insert("stripe-version", HeaderValue::from_static("2024-06-20"));
    response
}

async fn stripe(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(secret) = app.stripe_webhook_secret.as_deref() else {
        return Err(Problem::not_found().with_detail("Stripe webhooks are not configured"));
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    verify_stripe_signature(
        secret.as_bytes(),
        header,
        &body,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .map_err(|e| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "The webhook signature does not verify",
        )
        .with_detail(e.to_string())
    })?;
    let event: StripeEvent = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request("malformed_event", e.to_string()))?;
    match event.kind.as_str() {
        "issuing_authorization.request" => decide_authorization(&app, event, &body).await,
        "issuing_transaction.created" => record_transaction(&app, event).await,
        _ => Ok(received()),
    }
}

fn received() -> Response {
    (StatusCode::OK, axum::Json(json!({ "received": true }))).into_response()
}

/// A card issuer's transaction: money that moved on a card.
#[derive(Debug, Deserialize)]
struct Transaction {
    id: String,
    /// `capture` or `refund`.
    #[serde(rename = "type")]
    kind: String,
    /// Negative for a capture (money leaving the balance), positive for a refund.
    amount: i64,
    currency: String,
    authorization: Option<String>,
    card: String,
}

/// Records a capture or refund on the payment of the card it moved money on, once
/// however often it is delivered. 503 until the payment's card is known to
/// reconciliation (the issuer retries).
async fn record_transaction(app: &App, event: StripeEvent) -> Result<Response, Problem> {
    let transaction: Transaction = serde_json::from_value(event.data.object)
        .map_err(|e| Problem::bad_request("malformed_event", e.to_string()))?;
    let currency = Currency::parse(&transaction.currency.to_uppercase())
        .map_err(|e| Problem::bad_request("malformed_event", e.to_string()))?;
    let amount = Money::new(transaction.amount.saturating_abs(), currency);
    let at = OffsetDateTime::now_utc();
    let command = match (transaction.kind.as_str(), &transaction.authorization) {
        ("capture", Some(authorization)) => PaymentCommand::Capture {
            authorization_id: AuthorizationId(Uuid::new_v5(
                &AUTHORIZATION_NAMESPACE,
                authorization.as_bytes(),
            )),
            amount,
            at,
        },
        ("refund", _) => PaymentCommand::Refund {
            refund_id: RefundId(Uuid::new_v5(
                &AUTHORIZATION_NAMESPACE,
                transaction.id.as_bytes(),
            )),
            amount,
            at,
        },
        // Other kinds (disputes, unlinked refunds) are not this platform's to record.
        _ => return Ok(received()),
    };
    let found = shopagent_projections::reconciliation::find_payment_by_card(
        app.store.database(),
        &transaction.card,
    )
    .await?;
    let Some((tenant, payment_id)) = found else {
        return Err(not_yet_known(
            "payment_not_yet_known",
            "this card's payment",
        ));
    };
    let mut metadata = EventMetadata::new(tenant.clone(), "webhook:stripe");
    metadata.idempotency_key = IdempotencyKey::parse(&format!("stripe/{}", transaction.id)).ok();
    // What identifies the transaction, not the delivery: a redelivery (another event
    // id, another time) is the same request.
    metadata.request_digest = Some(hex::encode(Sha256::digest(format!(
        "{}|{}|{}|{}|{:?}|{}",
        transaction.id,
        transaction.kind,
        transaction.amount,
        transaction.currency,
        transaction.authorization,
        transaction.card
    ))));
    app.payments
        .execute(&format!("{tenant}/{payment_id}"), command, metadata)
        .await?;
    tracing::info!(transaction = %transaction.id, kind = %transaction.kind, "card transaction recorded");
    Ok(received())
}

async fn decide_authorization(
    app: &App,
    event: StripeEvent,
    body: &[u8],
) -> Result<Response, Problem> {
    let authorization: Authorization = serde_json::from_value(event.data.object)
        .map_err(|e| Problem::bad_request("malformed_event", e.to_string()))?;

    // The card's metadata routes back to the payment; anything else is not ours.
    let Some(payment_stream) = authorization.card.metadata.get("payment").filter(|s| {
        s.split_once('/')
            .is_some_and(|(_, id)| Uuid::parse_str(id).is_ok())
    }) else {
        return Ok(decision(false));
    };
    let tenant = payment_stream
        .split_once('/')
        .map(|(t, _)| t.to_owned())
        .unwrap_or_default();
    // A payment's terms never change once its card was requested; the authorization
    // itself is decided below on the payment's state, checked against its stream.
    let (payment, _) = app
        .payments
        .load_settled(payment_stream, |payment| payment.terms.is_some())
        .await?;
    let Some(terms) = payment.terms else {
        return Ok(decision(false));
    };
    let (amount, currency) = authorization.pending_request.as_ref().map_or(
        (authorization.amount, authorization.currency.as_str()),
        |p| (p.amount, p.currency.as_str()),
    );
    let Ok(currency) = Currency::parse(&currency.to_uppercase()) else {
        return Ok(decision(false));
    };
    // The authorization comes from the locked merchant only if the registry lists its
    // card-acceptor id.
    let (registered, _) = app
        .merchants
        .load(&merchant_stream_in(&tenant, &terms.merchant))
        .await?;
    let merchant = match authorization.merchant_data.network_id.as_deref() {
        Some(acceptor) if registered.accepts_for(acceptor) => terms.merchant.clone(),
        _ => MerchantId::parse("unrecognised-merchant").map_err(|_| Problem::internal())?,
    };
    let mandate_revoked = match terms.mandate_id {
        Some(mandate_id) => app
            .mandates
            .load(&format!("{tenant}/{mandate_id}"))
            .await?
            .0
            .revoked_at
            .is_some(),
        None => false,
    };
    let authorization_id = AuthorizationId(Uuid::new_v5(
        &AUTHORIZATION_NAMESPACE,
        authorization.id.as_bytes(),
    ));
    let mut metadata = EventMetadata::new(tenant, "webhook:stripe");
    metadata.idempotency_key = IdempotencyKey::parse(&format!("stripe/{}", event.id)).ok();
    metadata.request_digest = Some(hex::encode(Sha256::digest(body)));
    let command = PaymentCommand::DecideAuthorization {
        authorization_id,
        amount: Money::new(amount, currency),
        merchant,
        mandate_revoked,
        at: OffsetDateTime::now_utc(),
    };
    let decided = app
        .payments
        .execute_and_load(payment_stream, command, metadata, None)
        .await;
    let payment = match decided {
        Ok((payment, _)) => payment,
        // A second event for an authorization already decided gets the same answer.
        Err(shopagent_commands::CommandError::Rejected(
            shopagent_domain::payment::PaymentError::DuplicateAuthorization(_),
        )) => app.payments.load(payment_stream).await?.0,
        Err(other) => return Err(other.into()),
    };
    let approved = payment
        .authorizations
        .get(&authorization_id)
        .is_some_and(|(_, approved)| *approved);
    tracing::info!(authorization = %authorization.id, approved, "card authorization decided");
    Ok(decision(approved))
}

/// A webhook path names a tenant the way tokens do; anything else has no webhook.
fn known_tenant(tenant: &str) -> Result<(), Problem> {
    if crate::auth::valid_name(tenant, 64) {
        Ok(())
    } else {
        Err(Problem::not_found())
    }
}

fn signature_refused(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
        "The webhook signature does not verify",
    )
    .with_detail(detail)
}

async fn ucp_order_event(
    State(app): State<App>,
    axum::extract::Path((tenant, merchant)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    use shopagent_connectors::ucp::webhook::{self, SIGNATURE_HEADER, SignatureError};
    known_tenant(&tenant)?;
    let merchant = MerchantId::parse(&merchant).map_err(|_| Problem::not_found())?;
    let (registered, _) = app
        .merchants
        .load(&merchant_stream_in(&tenant, &merchant))
        .await?;
    let business_url = registered
        .profile
        .filter(|p| p.protocol == Some(shopagent_domain::merchant::Protocol::Ucp))
        .and_then(|p| p.api_endpoint)
        .ok_or_else(|| Problem::not_found().with_detail("no UCP merchant is registered here"))?;

    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| signature_refused("Request-Signature is missing"))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let unreachable = |error: shopagent_connectors::ucp::DiscoveryError| {
        tracing::warn!(%error, merchant = %merchant, "merchant profile unreadable");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "merchant_profile_unavailable",
            "The merchant's signing keys cannot be read right now",
        )
        .with_retry_after(5)
    };
    let keys = app
        .ucp_keys
        .keys(&business_url, false)
        .await
        .map_err(unreachable)?;
    match webhook::verify(signature, &body, &keys, now) {
        Ok(()) => {}
        Err(SignatureError::UnknownKey(_)) => {
            let keys = app
                .ucp_keys
                .keys(&business_url, true)
                .await
                .map_err(unreachable)?;
            webhook::verify(signature, &body, &keys, now)
                .map_err(|e| signature_refused(e.to_string()))?;
        }
        Err(other) => return Err(signature_refused(other.to_string())),
    }

    let event = webhook::parse_order_event(&body)
        .map_err(|e| Problem::bad_request("malformed_event", e.to_string()))?;
    let (order_id, currency) = order_named_by(
        &app,
        &tenant,
        shopagent_projections::OutsideReference::Merchant {
            merchant: merchant.as_str(),
            reference: &event.id,
        },
    )
    .await?;
    let updates = event
        .updates(currency)
        .map_err(|e| Problem::bad_request("malformed_event", e.to_string()))?;
    let mut metadata = EventMetadata::new(tenant.clone(), format!("webhook:ucp:{merchant}"));
    metadata.correlation_id = Uuid::new_v5(&AUTHORIZATION_NAMESPACE, event.event_id.as_bytes());
    let applied = shopagent_commands::fulfillment::apply_updates(
        &app.orders,
        &super::stream_id(&tenant, &order_id),
        &format!("ucp:{merchant}"),
        &updates,
        &metadata,
    )
    .await?;
    tracing::info!(
        event = %event.event_id, order = %order_id, applied = applied.applied,
        repeated = applied.repeated, not_applicable = applied.not_applicable.len(),
        "merchant order event received"
    );
    Ok(axum::Json(json!({
        "ucp": {"version": shopagent_connectors::ucp::VERSION, "capabilities": [
            {"name": "dev.ucp.shopping.order", "version": shopagent_connectors::ucp::VERSION}
        ]}
    }))
    .into_response())
}

/// 503 for a delivery about something a read model has not caught up with yet: the
/// sender retries.
fn not_yet_known(code: &'static str, what: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code,
        "Not known yet; deliver it again",
    )
    .with_detail(format!("shopagent does not know {what} yet"))
    .with_retry_after(1)
}

/// How long a merchant's event waits for an order this instance is placing at that
/// merchant: the merchant may send it before its answer to the placement is back.
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(2);

/// The order an outside reference names, or 503 until the orders hub knows it. An
/// order this instance placed lately needs no look-up, nor does one it is placing.
async fn order_named_by(
    app: &App,
    tenant: &str,
    by: shopagent_projections::OutsideReference<'_>,
) -> Result<(String, Currency), Problem> {
    if let shopagent_projections::OutsideReference::Merchant {
        merchant,
        reference,
    } = by
        && let Some(placed) = app
            .placed
            .find_or_wait(tenant, merchant, reference, PLACEMENT_PATIENCE)
            .await
    {
        return Ok(placed);
    }
    let found = shopagent_projections::find_order(app.store.database(), tenant, by).await?;
    let Some((order_id, currency)) = found else {
        return Err(not_yet_known("order_not_yet_known", "this order"));
    };
    let currency = Currency::parse(&currency).map_err(|_| Problem::internal())?;
    Ok((order_id, currency))
}

async fn tracking_event(
    State(app): State<App>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    use shopagent_connectors::easypost::webhook::{self, SIGNATURE_HEADER};
    let Some(secret) = app.tracking_webhook_secret.as_deref() else {
        return Err(Problem::not_found().with_detail("tracking webhooks are not configured"));
    };
    known_tenant(&tenant)?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let event = webhook::verify(
        secret,
        signature,
        &body,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .map_err(|e| signature_refused(e.to_string()))?;
    let Some((tracking_number, update)) = webhook::tracker_update(&event) else {
        return Ok((StatusCode::OK, axum::Json(json!({ "received": true }))).into_response());
    };
    let (order_id, _) = order_named_by(
        &app,
        &tenant,
        shopagent_projections::OutsideReference::Tracking(&tracking_number),
    )
    .await?;
    let mut metadata = EventMetadata::new(tenant.clone(), "webhook:easypost");
    metadata.correlation_id = Uuid::new_v5(&AUTHORIZATION_NAMESPACE, event.id.as_bytes());
    let applied = shopagent_commands::fulfillment::apply_updates(
        &app.orders,
        &super::stream_id(&tenant, &order_id),
        "easypost",
        &[update],
        &metadata,
    )
    .await?;
    tracing::info!(
        event = %event.id, order = %order_id, applied = applied.applied,
        repeated = applied.repeated, "tracking event received"
    );
    Ok((StatusCode::OK, axum::Json(json!({ "received": true }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1"}"#;
    // Computed independently: Python's hmac.new(b"whsec_test_secret",
    // b'1700000000.{"id":"evt_1"}', sha256).hexdigest().
    const V1: &str = "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";

    #[test]
    fn a_stripe_signature_over_timestamp_and_body_verifies() {
        let header = format!("t=1700000000,v1={V1}");
        assert_eq!(
            verify_stripe_signature(b"whsec_test_secret", &header, BODY, 1_700_000_100),
            Ok(())
        );
        // Several v1 entries (secret rotation): one match suffices.
        let rotated = format!("t=1700000000,v1={},v1={V1}", "00".repeat(32));
        assert_eq!(
            verify_stripe_signature(b"whsec_test_secret", &rotated, BODY, 1_700_000_000),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_a_stale_timestamp_fails() {
        let header = format!("t=1700000000,v1={V1}");
        assert_eq!(
            verify_stripe_signature(
                b"whsec_test_secret",
                &header,
                br#"{"id":"evt_2"}"#,
                1_700_000_000
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe_signature(b"whsec_other", &header, BODY, 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_stripe_signature(b"whsec_test_secret", &header, BODY, 1_700_000_301),
            Err(SignatureError::Stale)
        );
        for malformed in ["", "t=abc,v1=00", "v1=00", "t=1700000000"] {
            assert_eq!(
                verify_stripe_signature(b"whsec_test_secret", malformed, BODY, 1_700_000_000),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }
}
