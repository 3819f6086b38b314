//! Inbound webhooks. They authenticate by signature, not by bearer token.
//!
//! `POST /v1/webhooks/stripe` answers the card issuer's real-time authorization request
//! (`issuing_authorization.request`) from the Payment rules: amount within the cap,
//! the merchant the card is locked to, card unused, mandate not revoked, card not
//! expired. The signature (`Stripe-Signature: t=…,v1=…`, HMAC-SHA256 over `t.body`)
//! is checked over the raw body with a 5-minute tolerance; a failure answers 401 and
//! stores nothing. A redelivered event gets the first answer again, with no second
//! decision.

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
use shopagent_domain::ids::{AuthorizationId, MerchantId};
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
    Router::new().route("/v1/webhooks/stripe", post(stripe))
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
    if (now - timestamp).unsigned_abs() > TOLERANCE.as_secs() {
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
    if event.kind != "issuing_authorization.request" {
        return Ok((StatusCode::OK, axum::Json(json!({ "received": true }))).into_response());
    }
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
    let (payment, _) = app.payments.load(payment_stream).await?;
    let Some(terms) = payment.terms.clone() else {
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
    metadata.request_digest = Some(hex::encode(Sha256::digest(&body)));
    let command = PaymentCommand::DecideAuthorization {
        authorization_id,
        amount: Money::new(amount, currency),
        merchant,
        mandate_revoked,
        at: OffsetDateTime::now_utc(),
    };
    match app
        .payments
        .execute(payment_stream, command, metadata)
        .await
    {
        // A second event for an authorization already decided gets the same answer.
        Ok(_)
        | Err(shopagent_commands::CommandError::Rejected(
            shopagent_domain::payment::PaymentError::DuplicateAuthorization(_),
        )) => {}
        Err(other) => return Err(other.into()),
    }
    let (payment, _) = app.payments.load(payment_stream).await?;
    let approved = payment
        .authorizations
        .get(&authorization_id)
        .is_some_and(|(_, approved)| *approved);
    tracing::info!(authorization = %authorization.id, approved, "card authorization decided");
    Ok(decision(approved))
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
