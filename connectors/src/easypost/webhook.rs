//! EasyPost webhooks: `X-Hmac-Signature: hmac-sha256-hex=<hex>` is HMAC-SHA256 over the
//! raw body with the webhook secret (Unicode NFKD-normalized; ASCII secrets are
//! unchanged). EasyPost signs no timestamp header, so the event's own `updated_at`,
//! inside the signed body, is the timestamp: an event more than five minutes from now
//! is refused as a replay.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use shopagent_domain::ports::{FulfillmentUpdate, ReportedUpdate};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::wire::{Event, Tracker};

pub const SIGNATURE_HEADER: &str = "x-hmac-signature";
const PREFIX: &str = "hmac-sha256-hex=";
/// How far the event's `updated_at` may be from now, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or malformed X-Hmac-Signature")]
    Malformed,
    #[error("the signature does not verify")]
    Mismatch,
    #[error("the event's updated_at is more than five minutes from now")]
    Stale,
}

/// `X-Hmac-Signature` for `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Verifies the signature, then the event's time against `now` (Unix seconds); returns
/// the event.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<Event, SignatureError> {
    let signature = header
        .trim()
        .strip_prefix(PREFIX)
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
        .ok_or(SignatureError::Malformed)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Malformed)?;
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| SignatureError::Mismatch)?;
    // Signed, so the body is EasyPost's; an unreadable one is a malformed event.
    let event: Event = serde_json::from_slice(body).map_err(|_| SignatureError::Malformed)?;
    let at = OffsetDateTime::parse(&event.updated_at, &Rfc3339)
        .map_err(|_| SignatureError::Malformed)?;
    if now.abs_diff(at.unix_timestamp()) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    Ok(event)
}

/// A tracker event as a fulfillment update, if it reports one: the tracking number it
/// concerns and the update.
pub fn tracker_update(event: &Event) -> Option<(String, ReportedUpdate)> {
    if !event.description.starts_with("tracker.") {
        return None;
    }
    let tracker: Tracker = serde_json::from_value(event.result.clone()).ok()?;
    let detail = || {
        tracker
            .status_detail
            .clone()
            .unwrap_or_else(|| tracker.status.clone())
    };
    let update = match tracker.status.as_str() {
        "in_transit" => FulfillmentUpdate::Shipped {
            carrier: tracker.carrier.clone().unwrap_or_else(|| "unknown".into()),
            tracking_number: tracker.tracking_code.clone(),
        },
        "out_for_delivery" | "available_for_pickup" => FulfillmentUpdate::OutForDelivery,
        "delivered" => FulfillmentUpdate::Delivered,
        "return_to_sender" | "failure" | "error" => {
            FulfillmentUpdate::DeliveryException { detail: detail() }
        }
        _ => return None,
    };
    let at = tracker
        .updated_at
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    Some((
        tracker.tracking_code.clone(),
        ReportedUpdate {
            // One update per tracker and status, however often it is delivered.
            id: format!("{}/{}", tracker.id, tracker.status),
            update,
            at,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "easypost_webhook_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"Event","description":"tracker.updated","updated_at":"2026-11-25T12:00:00Z","result":{}}"#;
    // Computed independently: Python's hmac.new(b"easypost_webhook_secret", BODY,
    // sha256).hexdigest().
    const HEX: &str = "be6a34ec0b1f6f85e5400538e00888dc0f060c1b37e1ef2f4a149c16469c48b1";
    const NOW: i64 = 1_795_608_000; // 2026-11-25T12:00:00Z

    #[test]
    fn an_easypost_signature_over_the_body_verifies() {
        assert_eq!(sign(SECRET, BODY), format!("hmac-sha256-hex={HEX}"));
        let event =
            verify(SECRET, &format!("hmac-sha256-hex={HEX}"), BODY, NOW + 60).expect("verifies");
        assert_eq!(event.id, "evt_1");
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_an_old_event_fails() {
        let header = sign(SECRET, BODY);
        let tampered = String::from_utf8_lossy(BODY).replace("evt_1", "evt_2");
        assert_eq!(
            verify(SECRET, &header, tampered.as_bytes(), NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("other", &header, BODY, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, BODY, NOW + TOLERANCE_SECS + 1),
            Err(SignatureError::Stale)
        );
        for malformed in ["", "sha256=00", "hmac-sha256-hex=zz"] {
            assert_eq!(
                verify(SECRET, malformed, BODY, NOW),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }
}
