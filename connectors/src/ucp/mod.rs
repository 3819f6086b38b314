//! Merchant connector for the Universal Commerce Protocol (UCP, version 2026-01-11), REST
//! binding: a checkout session is created with the order's lines and shipping
//! destination, then completed with the virtual card as payment credential. Every call
//! carries `UCP-Agent` and an `Idempotency-Key` derived from the order's key, so a retry
//! never places a second order. The catalog capability ([`catalog`]) feeds and
//! searches the merchant's offers.

pub mod catalog;
mod client;
pub mod discovery;
mod mapping;
pub mod webhook;
pub mod wire;

pub use client::{DiscoveringUcpMerchant, UcpMerchant};
pub use discovery::{Discovered, DiscoveryError, discover, negotiate};

/// UCP version this connector speaks.
pub const VERSION: &str = "2026-01-11";

/// How to reach one UCP merchant.
#[derive(Debug, Clone)]
pub struct UcpConfig {
    /// The merchant's `rest.endpoint`, e.g. `https://shop.example/ucp`.
    pub endpoint: String,
    /// Our platform profile URI, sent in `UCP-Agent`.
    pub agent_profile: String,
}
