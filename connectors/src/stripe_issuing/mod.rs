//! Card issuer connector shaped after Stripe Issuing: single-use virtual cards with a
//! spending limit, voided by cancelling them. Pointing it at the real Stripe API is
//! configuration (base URL and secret key).

mod client;
mod error;
mod mapping;
pub mod wire;

pub use client::StripeIssuing;
pub use error::IssuerHttpError;

/// Where the issuer is and how to authenticate.
#[derive(Clone)]
pub struct StripeIssuingConfig {
    /// `https://api.stripe.com`, or a sandbox.
    pub base_url: String,
    /// Secret API key (`sk_…`); sent as a bearer token, never logged.
    pub api_key: String,
    /// The cardholder (`ich_…`) the virtual cards are issued to.
    pub cardholder: String,
    /// Per-request timeout.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for StripeIssuingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeIssuingConfig")
            .field("base_url", &self.base_url)
            .field("cardholder", &self.cardholder)
            .finish_non_exhaustive()
    }
}
