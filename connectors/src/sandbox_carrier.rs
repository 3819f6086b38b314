//! A sandbox carrier-tracking service speaking the EasyPost tracker shapes the connector
//! uses: `POST /v2/trackers` (Basic auth with the API key; one tracker per tracking
//! code), and `tracker.updated` events sent to a webhook URL, signed with
//! `X-Hmac-Signature`, whenever a test or the demo moves a parcel along. Deliveries go
//! out in order and are retried until acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::easypost::webhook::{SIGNATURE_HEADER, sign};

#[derive(Debug, Default)]
struct Depot {
    /// Trackers by tracking code.
    trackers: HashMap<String, Value>,
    webhooks: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
}

#[derive(Debug, Clone)]
pub struct SandboxCarrier {
    api_key: String,
    webhook_secret: String,
    depot: Arc<Mutex<Depot>>,
    deliveries: Arc<crate::sandbox::Deliveries>,
}

/// A parcel the sandbox was asked to move but does not track.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sandbox tracks no parcel {0}")]
pub struct UnknownParcel(pub String);

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl SandboxCarrier {
    pub fn new(api_key: impl Into<String>, webhook_secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            webhook_secret: webhook_secret.into(),
            depot: Arc::default(),
            deliveries: Arc::default(),
        }
    }

    fn depot(&self) -> MutexGuard<'_, Depot> {
        self.depot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends tracker events to `url` from now on. Needs a Tokio runtime.
    pub fn deliver_webhooks_to(&self, url: impl Into<String>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let secret = self.webhook_secret.clone();
        let sign: crate::sandbox::Signer =
            Box::new(move |body| Some((SIGNATURE_HEADER, sign(&secret, body))));
        tokio::spawn(crate::sandbox::deliver_in_order(
            url.into(),
            sign,
            receiver,
            self.deliveries.clone(),
        ));
        self.depot().webhooks = Some(sender);
    }

    /// Tracking codes registered so far.
    pub fn tracked(&self) -> Vec<String> {
        let mut codes: Vec<String> = self.depot().trackers.keys().cloned().collect();
        codes.sort();
        codes
    }

    /// How many webhook deliveries were acknowledged with a 2xx.
    pub fn webhooks_acknowledged(&self) -> usize {
        self.deliveries.acknowledged()
    }

    /// Moves the parcel to `status` (`in_transit`, `out_for_delivery`, `delivered`,
    /// `failure`, …) and sends the `tracker.updated` event.
    pub fn advance(&self, tracking_code: &str, status: &str) -> Result<(), UnknownParcel> {
        let mut depot = self.depot();
        let tracker = depot
            .trackers
            .get_mut(tracking_code)
            .ok_or_else(|| UnknownParcel(tracking_code.to_owned()))?;
        let at = now();
        tracker["status"] = json!(status);
        tracker["status_detail"] = json!("status_update");
        tracker["updated_at"] = json!(at);
        let source = tracker["carrier"].clone();
        if let Some(details) = tracker["tracking_details"].as_array_mut() {
            details.push(json!({"object": "TrackingDetail", "message": status.replace('_', " "), "status": status, "status_detail": "status_update", "datetime": at, "source": source}));
        }
        let event = json!({
            "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
            "object": "Event",
            "mode": "test",
            "description": "tracker.updated",
            "status": "pending",
            "created_at": at,
            "updated_at": at,
            "result": tracker.clone(),
        });
        if let Some(webhooks) = &depot.webhooks {
            let _ = webhooks.send(event);
        }
        Ok(())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:", self.api_key));
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Basic {expected}"))
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message, "errors": []}})),
    )
        .into_response()
}

async fn create(
    State(carrier): State<SandboxCarrier>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if !carrier.authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "APIKEY.INACTIVE",
            "invalid API key",
        );
    }
    let Some(Json(body)) = body else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "PARAMETER.REQUIRED",
            "tracker is required",
        );
    };
    let Some(code) = body["tracker"]["tracking_code"]
        .as_str()
        .filter(|c| !c.is_empty())
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "PARAMETER.REQUIRED",
            "tracker.tracking_code is required",
        );
    };
    let carrier_name = body["tracker"]["carrier"]
        .as_str()
        .unwrap_or("USPS")
        .to_owned();
    let mut depot = carrier.depot();
    let tracker = depot.trackers.entry(code.to_owned()).or_insert_with(|| {
        let at = now();
        json!({
            "id": format!("trk_{}", uuid::Uuid::new_v4().simple()),
            "object": "Tracker",
            "mode": "test",
            "tracking_code": code,
            "status": "pre_transit",
            "status_detail": "status_update",
            "created_at": at,
            "updated_at": at,
            "carrier": carrier_name,
            "tracking_details": [],
            "public_url": format!("https://sandbox.shopagent.invalid/track/{code}"),
        })
    });
    (StatusCode::OK, Json(tracker.clone())).into_response()
}

impl crate::Sandbox for SandboxCarrier {
    const NAME: &'static str = "carrier";

    fn router(&self) -> Router {
        Router::new()
            .route("/v2/trackers", post(create))
            .with_state(self.clone())
    }
}
