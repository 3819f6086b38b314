//! UCP order-event webhooks (`orderEvent` in the REST binding).
//!
//! The business signs each delivery with a detached JWS over the raw body (RFC 7797,
//! unencoded payload) in `Request-Signature`, made with a key it publishes in the
//! `signing_keys` of its `/.well-known/ucp` profile and named by `kid`. The protected
//! header also carries `iat`: a delivery signed more than five minutes from now is
//! refused, so a captured request cannot be replayed later.
//!
//! The body is the full order entity (never a delta) plus `event_id` and
//! `created_time`. Its append-only logs — fulfillment events and adjustments — map onto
//! [`FulfillmentUpdate`]s, each with a stable id, so applying the same entity twice, or
//! an older one after a newer one, changes nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::ports::{FulfillmentUpdate, ReportedUpdate};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "request-signature";
/// How far the signature's `iat` may be from now, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

/// A public key of the business, as a JWK in its profile's `signing_keys`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

impl SigningKey {
    /// The algorithm and verification key this JWK stands for.
    fn verifier(&self) -> Option<(Algorithm, DecodingKey)> {
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => {
                let key = DecodingKey::from_ec_components(self.x.as_deref()?, self.y.as_deref()?);
                Some((Algorithm::ES256, key.ok()?))
            }
            ("RSA", _) => {
                let key = DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?);
                Some((Algorithm::RS256, key.ok()?))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed Request-Signature (a detached JWS with b64=false)")]
    Malformed,
    #[error("no signing key {0} in the business profile")]
    UnknownKey(String),
    #[error("the signature's algorithm does not match key {0}")]
    WrongAlgorithm(String),
    #[error("the signature's iat is more than five minutes from now")]
    Stale,
    #[error("the signature does not verify")]
    Mismatch,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProtectedHeader {
    alg: Algorithm,
    kid: String,
    b64: bool,
    crit: Vec<String>,
    iat: i64,
}

impl SignatureError {
    /// The key id the signature names, to refresh a cached profile when it is unknown.
    pub fn kid_of(header_value: &str) -> Option<String> {
        let protected = header_value.split('.').next()?;
        let bytes = URL_SAFE_NO_PAD.decode(protected).ok()?;
        serde_json::from_slice::<ProtectedHeader>(&bytes)
            .ok()
            .map(|h| h.kid)
    }
}

/// Verifies `Request-Signature` over `body` at `now` (Unix seconds) against the
/// business's published keys.
pub fn verify(
    header_value: &str,
    body: &[u8],
    keys: &[SigningKey],
    now: i64,
) -> Result<(), SignatureError> {
    let mut parts = header_value.trim().split('.');
    let (Some(protected), Some(""), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SignatureError::Malformed);
    };
    let header: ProtectedHeader = URL_SAFE_NO_PAD
        .decode(protected)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(SignatureError::Malformed)?;
    if header.b64 || !header.crit.iter().any(|c| c == "b64") {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(header.iat) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let key = keys
        .iter()
        .find(|k| k.kid == header.kid)
        .ok_or_else(|| SignatureError::UnknownKey(header.kid.clone()))?;
    let (algorithm, decoding_key) = key
        .verifier()
        .filter(|(algorithm, _)| *algorithm == header.alg)
        .ok_or_else(|| SignatureError::WrongAlgorithm(header.kid.clone()))?;
    // RFC 7797: the signing input is the encoded header, a dot, and the raw payload.
    let mut message = Vec::with_capacity(protected.len() + 1 + body.len());
    message.extend_from_slice(protected.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    match jsonwebtoken::crypto::verify(signature, &message, &decoding_key, algorithm) {
        Ok(true) => Ok(()),
        _ => Err(SignatureError::Mismatch),
    }
}

/// A business's ES256 signing key: signs webhook bodies the way [`verify`] checks them.
#[derive(Clone)]
pub struct WebhookSigner {
    kid: String,
    private: EncodingKey,
    public: SigningKey,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl WebhookSigner {
    /// A fresh P-256 key named `kid`.
    pub fn generate(kid: impl Into<String>) -> Self {
        use p256::pkcs8::EncodePrivateKey;
        let kid = kid.into();
        let secret = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = secret.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c));
        let public = SigningKey {
            kid: kid.clone(),
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: coordinate(point.x()),
            y: coordinate(point.y()),
            n: None,
            e: None,
            usage: Some("sig".into()),
            alg: Some("ES256".into()),
        };
        let der = secret
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .unwrap_or_default();
        Self {
            kid,
            private: EncodingKey::from_ec_der(&der),
            public,
        }
    }

    /// The JWK to publish in `signing_keys`.
    pub fn public_key(&self) -> SigningKey {
        self.public.clone()
    }

    /// `Request-Signature` for `body`, signed at `iat` (Unix seconds).
    pub fn sign(&self, body: &[u8], iat: i64) -> Result<String, jsonwebtoken::errors::Error> {
        let header = ProtectedHeader {
            alg: Algorithm::ES256,
            kid: self.kid.clone(),
            b64: false,
            crit: vec!["b64".into()],
            iat,
        };
        let protected = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        let mut message = protected.clone().into_bytes();
        message.push(b'.');
        message.extend_from_slice(body);
        let signature = jsonwebtoken::crypto::sign(&message, &self.private, Algorithm::ES256)?;
        Ok(format!("{protected}..{signature}"))
    }
}

/// An `orderEvent` delivery: the order entity with the event's id and time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderEventBody {
    pub event_id: String,
    pub created_time: String,
    /// The business's order id.
    pub id: String,
    pub checkout_id: String,
    #[serde(default)]
    pub fulfillment: FulfillmentLog,
    #[serde(default)]
    pub adjustments: Vec<Adjustment>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FulfillmentLog {
    #[serde(default)]
    pub events: Vec<FulfillmentEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FulfillmentEvent {
    pub id: String,
    pub occurred_at: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub tracking_number: Option<String>,
    #[serde(default)]
    pub carrier: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Adjustment {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: String,
    pub status: String,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Why a delivery's body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderEventError {
    #[error("not a UCP order event: {0}")]
    Unreadable(String),
    #[error("{field} is not an RFC 3339 date-time")]
    BadTime { field: String },
    #[error("adjustment {0} is a refund without a positive amount")]
    RefundWithoutAmount(String),
}

pub fn parse_order_event(body: &[u8]) -> Result<OrderEventBody, OrderEventError> {
    serde_json::from_slice(body).map_err(|e| OrderEventError::Unreadable(e.to_string()))
}

fn time_of(field: &str, value: &str) -> Result<OffsetDateTime, OrderEventError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| OrderEventError::BadTime {
        field: field.to_owned(),
    })
}

impl OrderEventBody {
    /// The updates this order entity reports, oldest log entry first. Entry types the
    /// spec leaves open and shopagent does not know are left out.
    pub fn updates(&self, currency: Currency) -> Result<Vec<ReportedUpdate>, OrderEventError> {
        let mut updates = vec![ReportedUpdate {
            // The order exists at the business: it confirmed the order.
            id: format!("{}/created", self.id),
            update: FulfillmentUpdate::Confirmed,
            at: time_of("created_time", &self.created_time)?,
        }];
        for event in &self.fulfillment.events {
            let at = time_of("fulfillment.events[].occurred_at", &event.occurred_at)?;
            let detail = || event.description.clone().unwrap_or(event.kind.clone());
            let update = match event.kind.as_str() {
                "shipped" | "in_transit" => FulfillmentUpdate::Shipped {
                    carrier: event.carrier.clone().unwrap_or_else(|| "unknown".into()),
                    tracking_number: event.tracking_number.clone().unwrap_or(event.id.clone()),
                },
                "out_for_delivery" => FulfillmentUpdate::OutForDelivery,
                "delivered" => FulfillmentUpdate::Delivered,
                "failed_attempt" | "undeliverable" | "returned_to_sender" => {
                    FulfillmentUpdate::DeliveryException { detail: detail() }
                }
                "canceled" | "cancelled" => FulfillmentUpdate::Cancelled { reason: detail() },
                _ => continue,
            };
            updates.push(ReportedUpdate {
                id: event.id.clone(),
                update,
                at,
            });
        }
        for adjustment in &self.adjustments {
            let at = time_of("adjustments[].occurred_at", &adjustment.occurred_at)?;
            let id = |step: &str| format!("{}/{step}", adjustment.id);
            let rma = adjustment.id.clone();
            match (adjustment.kind.as_str(), adjustment.status.as_str()) {
                ("return", "pending") => updates.push(ReportedUpdate {
                    id: id("accepted"),
                    update: FulfillmentUpdate::ReturnAccepted { rma },
                    at,
                }),
                ("return", "completed") => {
                    updates.push(ReportedUpdate {
                        id: id("accepted"),
                        update: FulfillmentUpdate::ReturnAccepted { rma: rma.clone() },
                        at,
                    });
                    updates.push(ReportedUpdate {
                        id: id("received"),
                        update: FulfillmentUpdate::ReturnReceived { rma },
                        at,
                    });
                }
                ("refund", "completed") => {
                    let amount = adjustment
                        .amount
                        .filter(|a| *a > 0)
                        .ok_or_else(|| OrderEventError::RefundWithoutAmount(rma.clone()))?;
                    updates.push(ReportedUpdate {
                        id: id("refunded"),
                        update: FulfillmentUpdate::Refunded {
                            reference: rma,
                            amount: Money::new(amount, currency),
                        },
                        at,
                    });
                }
                ("cancellation", "completed") => updates.push(ReportedUpdate {
                    id: id("cancelled"),
                    update: FulfillmentUpdate::Cancelled {
                        reason: adjustment
                            .description
                            .clone()
                            .unwrap_or_else(|| "cancelled by the merchant".into()),
                    },
                    at,
                }),
                _ => {}
            }
        }
        Ok(updates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    #[test]
    fn a_signature_made_with_a_published_key_verifies() {
        let signer = WebhookSigner::generate("k1");
        let body = br#"{"event_id":"e1"}"#;
        let header = signer.sign(body, NOW).expect("signs");
        assert_eq!(
            verify(&header, body, &[signer.public_key()], NOW + 10),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_another_key_or_an_old_signature_is_refused() {
        let signer = WebhookSigner::generate("k1");
        let body = br#"{"event_id":"e1"}"#;
        let header = signer.sign(body, NOW).expect("signs");
        let keys = [signer.public_key()];
        assert_eq!(
            verify(&header, br#"{"event_id":"e2"}"#, &keys, NOW),
            Err(SignatureError::Mismatch)
        );
        let impostor = WebhookSigner::generate("k1");
        assert_eq!(
            verify(&header, body, &[impostor.public_key()], NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, body, &keys, NOW + TOLERANCE_SECS + 1),
            Err(SignatureError::Stale)
        );
        let other_kid = WebhookSigner::generate("k2");
        assert_eq!(
            verify(&header, body, &[other_kid.public_key()], NOW),
            Err(SignatureError::UnknownKey("k1".into()))
        );
        for malformed in ["", "abc", "a.b.c", "a..b..c"] {
            assert_eq!(
                verify(malformed, body, &keys, NOW),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }
}
