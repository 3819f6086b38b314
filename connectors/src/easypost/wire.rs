//! The parts of EasyPost's JSON this connector reads and writes (see
//! `shared/specs/easypost/cassettes`).

use serde::{Deserialize, Serialize};

/// Body of `POST /v2/trackers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateTracker {
    pub tracker: TrackerRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackerRequest {
    pub tracking_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
}

/// A `Tracker` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tracker {
    pub id: String,
    pub object: String,
    pub tracking_code: String,
    /// `unknown`, `pre_transit`, `in_transit`, `out_for_delivery`, `delivered`,
    /// `available_for_pickup`, `return_to_sender`, `failure`, `cancelled` or `error`.
    pub status: String,
    #[serde(default)]
    pub status_detail: Option<String>,
    #[serde(default)]
    pub carrier: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// An `Event` object, as webhooks deliver it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: String,
    pub object: String,
    /// `tracker.created`, `tracker.updated`, …
    pub description: String,
    pub updated_at: String,
    pub result: serde_json::Value,
}

/// EasyPost's error envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
}
