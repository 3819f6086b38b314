//! Merchant: an entry of the capability registry — how a merchant can be bought from,
//! how healthy it is, and what policy allows — and the checkout path choice.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::MerchantId;
use crate::mandate::Mode;
use crate::order::CheckoutPath;
use crate::{Aggregate, DomainEvent};

/// The protocol a merchant's API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Universal Commerce Protocol.
    Ucp,
    /// Agentic Commerce Protocol.
    Acp,
    Shopify,
    Bigcommerce,
    Ebay,
    Violet,
    Firmly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    #[default]
    Healthy,
    /// Slow or failing some calls: still tried.
    Degraded,
    /// Not tried until it recovers.
    Down,
}

/// How a merchant can be bought from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantProfile {
    pub name: String,
    /// The merchant's API, for the `api` path.
    pub protocol: Option<Protocol>,
    pub api_endpoint: Option<String>,
    /// Where shoppers are sent for the `deeplink` path.
    pub deeplink_base: Option<String>,
    /// The site headless automation would drive, for the `headless` path.
    pub headless_domain: Option<String>,
    pub paths: BTreeSet<CheckoutPath>,
    /// The merchant's card-acceptor ids on the card network: an authorization on a
    /// merchant-locked card is approved only when it comes from one of these.
    #[serde(default)]
    pub card_acceptor_ids: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MerchantCommand {
    Register {
        merchant: MerchantId,
        profile: MerchantProfile,
        at: OffsetDateTime,
    },
    UpdateProfile {
        profile: MerchantProfile,
        at: OffsetDateTime,
    },
    ReportHealth {
        health: Health,
        reason: String,
        at: OffsetDateTime,
    },
    /// Policy: headless automation is allowed only for allowlisted merchants.
    SetHeadlessAllowed { allowed: bool, at: OffsetDateTime },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MerchantEvent {
    MerchantRegistered {
        merchant: MerchantId,
        profile: MerchantProfile,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MerchantProfileUpdated {
        profile: MerchantProfile,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MerchantHealthReported {
        health: Health,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    HeadlessAllowlistChanged {
        allowed: bool,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl DomainEvent for MerchantEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::MerchantRegistered { .. } => "MerchantRegistered",
            Self::MerchantProfileUpdated { .. } => "MerchantProfileUpdated",
            Self::MerchantHealthReported { .. } => "MerchantHealthReported",
            Self::HeadlessAllowlistChanged { .. } => "HeadlessAllowlistChanged",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerchantError {
    #[error("merchant is not registered")]
    NotFound,
    #[error("merchant is already registered")]
    AlreadyExists,
    #[error("invalid merchant profile: {0}")]
    InvalidProfile(String),
    #[error("health reports carry a reason of 1 to 500 characters")]
    InvalidReason,
}

impl MerchantError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "merchant_not_found",
            Self::AlreadyExists => "merchant_exists",
            Self::InvalidProfile(_) => "invalid_merchant_profile",
            Self::InvalidReason => "invalid_health_reason",
        }
    }
}

/// Absolute https URL, or http on a loopback host (sandboxes and tests).
fn valid_url(text: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false;
    };
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    text.len() <= 2048
        && url.host().is_some()
        && (url.scheme() == "https" || (url.scheme() == "http" && loopback))
}

impl MerchantProfile {
    fn validate(&self) -> Result<(), MerchantError> {
        let invalid = |reason: &str| Err(MerchantError::InvalidProfile(reason.to_owned()));
        let name = self.name.trim().chars().count();
        if name == 0 || name > 200 {
            return invalid("name must be 1 to 200 characters");
        }
        if self.paths.is_empty() {
            return invalid("a merchant supports at least one checkout path");
        }
        if self.paths.contains(&CheckoutPath::Api)
            && (self.protocol.is_none() || self.api_endpoint.is_none())
        {
            return invalid("the api path needs a protocol and an api_endpoint");
        }
        if self.paths.contains(&CheckoutPath::Deeplink) && self.deeplink_base.is_none() {
            return invalid("the deeplink path needs a deeplink_base");
        }
        if self.paths.contains(&CheckoutPath::Headless) && self.headless_domain.is_none() {
            return invalid("the headless path needs a headless_domain");
        }
        for url in [&self.api_endpoint, &self.deeplink_base]
            .into_iter()
            .flatten()
        {
            if !valid_url(url) {
                return invalid("endpoints are https URLs (http only on loopback)");
            }
        }
        if self.card_acceptor_ids.len() > 50
            || self.card_acceptor_ids.iter().any(|id| {
                id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric())
            })
        {
            return invalid(
                "card_acceptor_ids are up to 50 alphanumeric ids of at most 64 characters",
            );
        }
        if let Some(domain) = &self.headless_domain {
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !valid {
                return invalid("headless_domain is a host name such as shop.example.com");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub id: Option<MerchantId>,
    pub profile: Option<MerchantProfile>,
    pub health: Health,
    pub headless_allowed: bool,
}

impl Aggregate for Merchant {
    const TYPE: &'static str = "merchant";
    type Command = MerchantCommand;
    type Event = MerchantEvent;
    type Error = MerchantError;

    fn decide(&self, command: MerchantCommand) -> Result<Vec<MerchantEvent>, MerchantError> {
        use MerchantCommand as C;
        use MerchantEvent as E;
        let event = match command {
            C::Register {
                merchant,
                profile,
                at,
            } => {
                if self.id.is_some() {
                    return Err(MerchantError::AlreadyExists);
                }
                profile.validate()?;
                E::MerchantRegistered {
                    merchant,
                    profile,
                    at,
                }
            }
            C::UpdateProfile { profile, at } => {
                self.id.as_ref().ok_or(MerchantError::NotFound)?;
                profile.validate()?;
                if self.profile.as_ref() == Some(&profile) {
                    return Ok(vec![]);
                }
                E::MerchantProfileUpdated { profile, at }
            }
            C::ReportHealth { health, reason, at } => {
                self.id.as_ref().ok_or(MerchantError::NotFound)?;
                let length = reason.trim().chars().count();
                if length == 0 || length > 500 {
                    return Err(MerchantError::InvalidReason);
                }
                if self.health == health {
                    return Ok(vec![]);
                }
                E::MerchantHealthReported { health, reason, at }
            }
            C::SetHeadlessAllowed { allowed, at } => {
                self.id.as_ref().ok_or(MerchantError::NotFound)?;
                if self.headless_allowed == allowed {
                    return Ok(vec![]);
                }
                E::HeadlessAllowlistChanged { allowed, at }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: MerchantEvent) {
        use MerchantEvent as E;
        match event {
            E::MerchantRegistered {
                merchant, profile, ..
            } => {
                self.id = Some(merchant);
                self.profile = Some(profile);
            }
            E::MerchantProfileUpdated { profile, .. } => self.profile = Some(profile),
            E::MerchantHealthReported { health, .. } => self.health = health,
            E::HeadlessAllowlistChanged { allowed, .. } => self.headless_allowed = allowed,
        }
    }
}

impl Merchant {
    /// Whether a card authorization from `acceptor_id` comes from this merchant.
    pub fn accepts_for(&self, acceptor_id: &str) -> bool {
        self.profile
            .as_ref()
            .is_some_and(|p| p.card_acceptor_ids.contains(acceptor_id))
    }
}

/// The checkout path for one merchant's sub-cart, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChoice {
    pub path: CheckoutPath,
    pub reason: String,
}

/// Chooses `api` → `deeplink` → `headless` by capability, health and policy. Assist mode
/// never buys: it always ends in a deep link for the shopper. A merchant the registry
/// does not know is handed to the shopper too.
pub fn choose_path(mode: Mode, merchant: &Merchant) -> PathChoice {
    let choice = |path, reason: String| PathChoice { path, reason };
    let Some(profile) = merchant.profile.as_ref() else {
        return choice(
            CheckoutPath::Deeplink,
            "merchant is not in the capability registry: the shopper completes the purchase".into(),
        );
    };
    if mode == Mode::Assist {
        return choice(
            CheckoutPath::Deeplink,
            "assist mode never buys: the shopper completes the purchase".into(),
        );
    }
    let up = merchant.health != Health::Down;
    if profile.paths.contains(&CheckoutPath::Api) && up {
        let protocol = profile.protocol.map_or("an", |p| match p {
            Protocol::Ucp => "a UCP",
            Protocol::Acp => "an ACP",
            Protocol::Shopify => "a Shopify",
            Protocol::Bigcommerce => "a BigCommerce",
            Protocol::Ebay => "an eBay",
            Protocol::Violet => "a Violet",
            Protocol::Firmly => "a Firmly",
        });
        return choice(
            CheckoutPath::Api,
            format!(
                "{} has {protocol} API and is {}",
                profile.name,
                health_word(merchant.health)
            ),
        );
    }
    let why_not_api = if profile.paths.contains(&CheckoutPath::Api) {
        "its API is down"
    } else {
        "it has no API"
    };
    if profile.paths.contains(&CheckoutPath::Deeplink) {
        return choice(
            CheckoutPath::Deeplink,
            format!(
                "{} cannot be bought from automatically ({why_not_api}): the shopper completes the purchase",
                profile.name
            ),
        );
    }
    if profile.paths.contains(&CheckoutPath::Headless) && merchant.headless_allowed && up {
        return choice(
            CheckoutPath::Headless,
            format!(
                "{why_not_api} and no deep link; {} is allowlisted for headless checkout",
                profile.headless_domain.as_deref().unwrap_or("its site")
            ),
        );
    }
    choice(
        CheckoutPath::Deeplink,
        format!(
            "no usable automated path ({why_not_api}; headless not allowed): the shopper completes the purchase"
        ),
    )
}

fn health_word(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded but up",
        Health::Down => "down",
    }
}
