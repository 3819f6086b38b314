//! Discovery and version negotiation: read a business's `/.well-known/ucp` profile and
//! decide whether, and at which version, we can check out with it.

use super::VERSION;
use super::wire::Profile;

pub const SHOPPING_SERVICE: &str = "dev.ucp.shopping";
pub const CHECKOUT_CAPABILITY: &str = "dev.ucp.shopping.checkout";

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The REST endpoint of the shopping service.
    pub endpoint: String,
    /// The version both sides speak.
    pub version: String,
    /// Keys the business signs its webhooks with.
    pub signing_keys: Vec<super::webhook::SigningKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("profile unreachable: {0}")]
    Unreachable(String),
    #[error("profile unreadable: {0}")]
    Unreadable(String),
    #[error("the business offers no REST shopping service")]
    NoRestService,
    #[error("the business does not offer checkout")]
    NoCheckout,
    #[error("the business speaks checkout {theirs}; we need {VERSION} or later")]
    UnsupportedVersion { theirs: String },
}

/// Negotiates with a profile: the business must offer the shopping service over REST and
/// the checkout capability at our version or a later, backward-compatible one (UCP
/// versions are dates). The agreed version is ours.
pub fn negotiate(profile: &Profile) -> Result<Discovered, DiscoveryError> {
    let service = profile
        .ucp
        .services
        .get(SHOPPING_SERVICE)
        .ok_or(DiscoveryError::NoRestService)?;
    let endpoint = service
        .rest
        .as_ref()
        .map(|r| r.endpoint.clone())
        .ok_or(DiscoveryError::NoRestService)?;
    let checkout = profile
        .ucp
        .capabilities
        .iter()
        .filter(|c| c.name == CHECKOUT_CAPABILITY)
        .max_by(|a, b| a.version.cmp(&b.version))
        .ok_or(DiscoveryError::NoCheckout)?;
    if checkout.version.as_str() < VERSION {
        return Err(DiscoveryError::UnsupportedVersion {
            theirs: checkout.version.clone(),
        });
    }
    Ok(Discovered {
        endpoint,
        version: VERSION.to_owned(),
        signing_keys: profile.signing_keys.clone(),
    })
}

/// Fetches `{base}/.well-known/ucp` with `http` (whose timeout bounds the call) and
/// negotiates.
pub async fn discover(
    http: &reqwest::Client,
    base_url: &str,
) -> Result<Discovered, DiscoveryError> {
    let url = format!("{}/.well-known/ucp", base_url.trim_end_matches('/'));
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(DiscoveryError::Unreachable(format!(
            "profile answered {}",
            response.status()
        )));
    }
    let profile: Profile = response
        .json()
        .await
        .map_err(|e| DiscoveryError::Unreadable(e.to_string()))?;
    negotiate(&profile)
}
