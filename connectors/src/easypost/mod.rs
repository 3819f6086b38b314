//! Carrier tracking connector shaped after EasyPost trackers: register a parcel
//! (`POST /v2/trackers`), then receive `tracker.updated` events by webhook, signed with
//! `X-Hmac-Signature: hmac-sha256-hex=…` over the raw body. Pointing it at the real
//! EasyPost API is configuration (base URL and API key).

mod client;
pub mod webhook;
pub mod wire;

pub use client::EasyPostTracking;

/// Where the tracking API is and how to authenticate.
#[derive(Clone)]
pub struct EasyPostConfig {
    /// `https://api.easypost.com`, or a sandbox.
    pub base_url: String,
    /// API key, sent as the Basic-auth user name; never logged.
    pub api_key: String,
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for EasyPostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EasyPostConfig")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}
