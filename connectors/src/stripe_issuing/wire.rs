//! The parts of Stripe's JSON this connector reads (see `shared/specs/stripe`).

use serde::Deserialize;

/// An `issuing.card` object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssuingCard {
    pub id: String,
    pub object: String,
    /// `active`, `inactive` or `canceled`.
    pub status: String,
    pub exp_month: u8,
    pub exp_year: i32,
    pub currency: String,
    #[serde(default)]
    pub last4: Option<String>,
    /// `Visa` or `MasterCard`.
    #[serde(default)]
    pub brand: Option<String>,
}

/// Stripe's error envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: Option<String>,
}
