use crate::propagation::WithTraceContext;
use reqwest::StatusCode;
use shopagent_domain::ports::{CallError, TrackParcel, TrackingProvider};

use super::EasyPostConfig;
use super::wire::{CreateTracker, ErrorBody, Tracker, TrackerRequest};

/// The connector. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EasyPostTracking {
    config: EasyPostConfig,
    http: reqwest::Client,
}

impl EasyPostTracking {
    pub fn new(config: EasyPostConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        Ok(Self { config, http })
    }
}

#[async_trait::async_trait]
impl TrackingProvider for EasyPostTracking {
    /// EasyPost keeps one tracker per tracking code and carrier, so registering a parcel
    /// again returns the same tracker: the call is idempotent by nature. The key is
    /// sent as well, for providers that want it.
    async fn track(&self, parcel: &TrackParcel) -> Result<String, CallError> {
        let url = format!("{}/v2/trackers", self.config.base_url.trim_end_matches('/'));
        let body = CreateTracker {
            tracker: TrackerRequest {
                tracking_code: parcel.tracking_number.clone(),
                carrier: Some(parcel.carrier.clone()),
            },
        };
        let response = self
            .http
            .post(url)
            .basic_auth(&self.config.api_key, Some(""))
            .header("Idempotency-Key", &parcel.idempotency_key)
            .json(&body)
            .with_trace_context()
            .send()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(CallError::Unavailable(format!(
                "tracking answered {status}"
            )));
        }
        if !status.is_success() {
            let why = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| format!("{}: {}", e.error.code, e.error.message.unwrap_or_default()))
                .unwrap_or_else(|_| format!("tracking answered {status}"));
            return Err(CallError::Refused(why));
        }
        let tracker: Tracker = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Refused(format!("unreadable tracker: {e}")))?;
        Ok(tracker.id)
    }
}
