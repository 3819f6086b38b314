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
use jsonwebtoken::{Algorithm, DecodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as ring_signature, EcdsaKeyPair, KeyPair};
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

/// How a signature is checked against one published key.
enum Verifier {
    /// A P-256 point, uncompressed (`04 ‖ x ‖ y`). Checked with `ring`, whose P-256
    /// arithmetic is several times faster than the portable one `jsonwebtoken` uses;
    /// every merchant order event is one such check.
    Es256(Vec<u8>),
    Rs256(DecodingKey),
}

impl Verifier {
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Es256(_) => Algorithm::ES256,
            Self::Rs256(_) => Algorithm::RS256,
        }
    }

    /// Whether `signature` (base64url) signs `message`.
    fn verifies(&self, signature: &str, message: &[u8]) -> bool {
        match self {
            Self::Es256(point) => URL_SAFE_NO_PAD.decode(signature).is_ok_and(|signature| {
                ring_signature::UnparsedPublicKey::new(
                    &ring_signature::ECDSA_P256_SHA256_FIXED,
                    point,
                )
                .verify(message, &signature)
                .is_ok()
            }),
            Self::Rs256(key) => {
                jsonwebtoken::crypto::verify(signature, message, key, Algorithm::RS256)
                    .unwrap_or(false)
            }
        }
    }
}

impl SigningKey {
    /// How signatures by the key this JWK stands for are checked.
    fn verifier(&self) -> Option<Verifier> {
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => {
                let coordinate = |c: Option<&str>| {
                    URL_SAFE_NO_PAD
                        .decode(c?)
                        .ok()
                        .filter(|bytes| bytes.len() == 32)
                };
                let mut point = vec![4];
                point.extend(coordinate(self.x.as_deref())?);
                point.extend(coordinate(self.y.as_deref())?);
                Some(Verifier::Es256(point))
            }
            ("RSA", _) => {
                let key = DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?);
                Some(Verifier::Rs256(key.ok()?))
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
    let verifier = key
        .verifier()
        .filter(|verifier| verifier.algorithm() == header.alg)
        .ok_or_else(|| SignatureError::WrongAlgorithm(header.kid.clone()))?;
    // RFC 7797: the signing input is the encoded header, a dot, and the raw payload.
    let mut message = Vec::with_capacity(protected.len() + 1 + body.len());
    message.extend_from_slice(protected.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    if verifier.verifies(signature, &message) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// A business's ES256 signing key: signs webhook bodies the way [`verify`] checks them.
#[derive(Clone)]
pub struct WebhookSigner {
    kid: String,
    private: std::sync::Arc<EcdsaKeyPair>,
    public: SigningKey,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the webhook body could not be signed")]
pub struct SignError;

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl WebhookSigner {
    /// A fresh P-256 key named `kid`.
    ///
    /// # Panics
    /// When the system's random source fails: no key can be made without it.
    pub fn generate(kid: impl Into<String>) -> Self {
        let kid = kid.into();
        let algorithm = &ring_signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(algorithm, &rng)
            .expect("the system's random source makes a P-256 key");
        let private = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &rng)
            .expect("a key ring just made is one it reads");
        // Uncompressed: 04, then the 32-byte x and y.
        let point = private.public_key().as_ref();
        let coordinate = |c: &[u8]| Some(URL_SAFE_NO_PAD.encode(c));
        let public = SigningKey {
            kid: kid.clone(),
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: coordinate(&point[1..33]),
            y: coordinate(&point[33..65]),
            n: None,
            e: None,
            usage: Some("sig".into()),
            alg: Some("ES256".into()),
        };
        Self {
            kid,
            private: std::sync::Arc::new(private),
            public,
        }
    }

    /// The JWK to publish in `signing_keys`.
    pub fn public_key(&self) -> SigningKey {
        self.public.clone()
    }

    /// `Request-Signature` for `body`, signed at `iat` (Unix seconds).
    pub fn sign(&self, body: &[u8], iat: i64) -> Result<String, SignError> {
        let header = ProtectedHeader {
            alg: Algorithm::ES256,
            kid: self.kid.clone(),
            b64: false,
            crit: vec!["b64".into()],
            iat,
        };
        let protected = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|_| SignError)?);
        let mut message = protected.clone().into_bytes();
        message.push(b'.');
        message.extend_from_slice(body);
        let signature = self
            .private
            .sign(&SystemRandom::new(), &message)
            .map_err(|_| SignError)?;
        let signature = URL_SAFE_NO_PAD.encode(signature.as_ref());
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
    fn a_signature_made_elsewhere_verifies_and_ours_verifies_elsewhere() {
        // Made with Python's `cryptography` (its own P-256 key, DER signature turned
        // into r ‖ s), not with the code under test.
        let elsewhere = SigningKey {
            kid: "py1".into(),
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some("0xDvolRoUWPwqLT2chdP1Tf_vxnmRObABV5JJ2TyTBU".into()),
            y: Some("3qKoReVqa6UhB3KUtzAmD_HIJ1HZeEVXAbWCYL1s8Ag".into()),
            n: None,
            e: None,
            usage: Some("sig".into()),
            alg: Some("ES256".into()),
        };
        let header = "eyJhbGciOiJFUzI1NiIsImtpZCI6InB5MSIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il0sImlhdCI6MTc5MDAwMDAwMH0..XCP0LwVedOxwORZN1tcgvor5N9AaHFVPFm2j-rUhBVpWMFP_Urid_AwN-0xGfMOSVu-ZA65HGTf8Jy67oUnBFQ";
        let keys = [elsewhere];
        assert_eq!(verify(header, br#"{"event_id":"e1"}"#, &keys, NOW), Ok(()));
        assert_eq!(
            verify(header, br#"{"event_id":"e2"}"#, &keys, NOW),
            Err(SignatureError::Mismatch)
        );

        // Ours, checked by `jsonwebtoken`'s own ES256 from the JWK we publish.
        let signer = WebhookSigner::generate("k1");
        let body = br#"{"event_id":"e1"}"#;
        let header = signer.sign(body, NOW).expect("signs");
        let (protected, signature) = header.split_once("..").expect("detached");
        let public = signer.public_key();
        let key = DecodingKey::from_ec_components(
            public.x.as_deref().expect("x"),
            public.y.as_deref().expect("y"),
        )
        .expect("a P-256 point");
        let message = [protected.as_bytes(), b".", body].concat();
        assert_eq!(
            jsonwebtoken::crypto::verify(signature, &message, &key, Algorithm::ES256),
            Ok(true)
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
