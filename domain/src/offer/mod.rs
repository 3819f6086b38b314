//! Offers: what a merchant sells, at what price, on what terms — normalized into one
//! canonical record so that offers from different merchants and sources compare.
//!
//! * [`price`] reads prices as pages write them; [`gtin`] checks product codes;
//!   [`taxonomy`] maps any category onto one tree; [`ProductKey`] groups the listings
//!   of one product across merchants.
//! * [`Offer`] is the aggregate: one merchant's listing of one product, ingested from a
//!   feed, a search or a product page, updated when what it says changes, withdrawn.

pub mod gtin;
pub mod normalize;
pub mod price;
pub mod ranking;
pub mod search;
pub mod taxonomy;

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ids::{Category, MerchantId, OfferId};
use crate::money::Money;
pub use gtin::Gtin;

/// Whether the merchant can sell it now (schema.org `ItemAvailability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    InStock,
    LimitedAvailability,
    PreOrder,
    BackOrder,
    OutOfStock,
    Discontinued,
}

impl Availability {
    /// Reads schema.org's values, as URLs (`https://schema.org/InStock`) or bare names,
    /// and the plain words feeds use (`in stock`, `out_of_stock`).
    pub fn parse(text: &str) -> Option<Self> {
        let name = text
            .trim()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .replace([' ', '_', '-'], "");
        Some(match name.as_str() {
            "instock" | "available" | "onlineonly" | "instoreonly" => Self::InStock,
            "limitedavailability" => Self::LimitedAvailability,
            "preorder" | "presale" => Self::PreOrder,
            "backorder" => Self::BackOrder,
            "outofstock" | "soldout" | "unavailable" => Self::OutOfStock,
            "discontinued" => Self::Discontinued,
            _ => return None,
        })
    }

    /// The name it is stored and served under (`in_stock`, `pre_order`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InStock => "in_stock",
            Self::LimitedAvailability => "limited_availability",
            Self::PreOrder => "pre_order",
            Self::BackOrder => "back_order",
            Self::OutOfStock => "out_of_stock",
            Self::Discontinued => "discontinued",
        }
    }

    /// Whether an order placed now can be fulfilled without waiting for stock.
    pub fn can_ship_now(self) -> bool {
        matches!(self, Self::InStock | Self::LimitedAvailability)
    }
}

/// Business days from order to delivery, as the merchant states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliveryEstimate {
    pub min_days: u16,
    pub max_days: u16,
}

impl DeliveryEstimate {
    /// `min..=max` days; refused when `min > max` or beyond a year.
    pub fn new(min_days: u16, max_days: u16) -> Option<Self> {
        (min_days <= max_days && max_days <= 366).then_some(Self { min_days, max_days })
    }
}

/// What returning it costs and how long the shopper has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReturnPolicy {
    /// Days to return it; 0: no returns.
    pub window_days: u16,
    /// Whether returning it is free for the shopper.
    pub free: bool,
}

/// What shoppers say of the merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrustSignals {
    /// Average rating in hundredths of a star, 0 to 500.
    pub rating_centi: u16,
    pub reviews: u32,
}

impl TrustSignals {
    /// A rating out of `best` (5 unless the source says otherwise).
    pub fn new(rating: f64, best: f64, reviews: u32) -> Option<Self> {
        let scaled = rating / best * 500.0;
        (rating.is_finite() && best > 0.0 && (0.0..=500.0).contains(&scaled)).then(|| Self {
            rating_centi: scaled.round() as u16,
            reviews,
        })
    }
}

/// The canonical record of one merchant's offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRecord {
    pub title: String,
    pub brand: Option<String>,
    pub gtin: Option<Gtin>,
    /// Manufacturer part number, as the merchant writes it.
    pub mpn: Option<String>,
    /// The node of our taxonomy.
    pub category: Category,
    /// The merchant's own category words, kept for reference.
    pub merchant_category: Option<String>,
    pub price: Money,
    /// Shipping to the shopper's country; `None`: not stated.
    pub shipping: Option<Money>,
    pub availability: Option<Availability>,
    pub delivery: Option<DeliveryEstimate>,
    pub returns: Option<ReturnPolicy>,
    pub trust: Option<TrustSignals>,
}

/// Where an offer came from, for the shopper and the auditor: the page (or feed
/// response) and the SHA-256 of the snapshot that was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Citation {
    pub url: String,
    pub digest: String,
    #[serde(with = "time::serde::rfc3339")]
    pub retrieved_at: OffsetDateTime,
}

/// How an offer entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferSource {
    /// A merchant connector's catalogue feed.
    Feed,
    /// A merchant connector's search answer.
    Search,
    /// A product page read by `POST /v1/offers/extract`.
    Page,
}

/// What groups listings of one product across merchants: the GTIN, else brand and
/// MPN, else — conservatively — brand and every word of the title. Without any of
/// these a listing stands alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProductKey(String);

impl ProductKey {
    pub fn of(merchant: &MerchantId, offer_id: &OfferId, record: &ProductRecord) -> Self {
        if let Some(gtin) = &record.gtin {
            return Self(format!("gtin:{gtin}"));
        }
        let brand = record.brand.as_deref().map(words).filter(|b| !b.is_empty());
        if let (Some(brand), Some(mpn)) = (&brand, &record.mpn) {
            let mpn: String = mpn
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            if !mpn.is_empty() {
                return Self(format!("mpn:{brand}/{mpn}"));
            }
        }
        if let Some(brand) = brand {
            let mut title: Vec<String> = words(&record.title)
                .split(' ')
                .filter(|word| !brand.split(' ').any(|b| b == *word))
                .map(str::to_owned)
                .collect();
            title.sort_unstable();
            title.dedup();
            if title.len() >= 2 {
                return Self(format!("title:{brand}/{}", title.join(" ")));
            }
        }
        Self(format!("offer:{merchant}/{offer_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase alphanumeric words separated by single spaces.
fn words(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One merchant's listing of one product.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub merchant: Option<MerchantId>,
    pub offer_id: Option<OfferId>,
    pub record: Option<ProductRecord>,
    pub citation: Option<Citation>,
    pub withdrawn: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OfferCommand {
    /// What a source says of the offer now. Lists it the first time; afterwards updates
    /// it if anything changed, and appends nothing if not.
    Ingest {
        merchant: MerchantId,
        offer_id: OfferId,
        record: Box<ProductRecord>,
        citation: Option<Citation>,
        source: OfferSource,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The merchant no longer sells it.
    Withdraw {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OfferEvent {
    OfferListed {
        merchant: MerchantId,
        offer_id: OfferId,
        product_key: ProductKey,
        record: Box<ProductRecord>,
        citation: Option<Citation>,
        source: OfferSource,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OfferUpdated {
        product_key: ProductKey,
        record: Box<ProductRecord>,
        citation: Option<Citation>,
        source: OfferSource,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OfferWithdrawn {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl DomainEvent for OfferEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::OfferListed { .. } => "OfferListed",
            Self::OfferUpdated { .. } => "OfferUpdated",
            Self::OfferWithdrawn { .. } => "OfferWithdrawn",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the offer belongs to {listed}, not {given}")]
    OtherListing { listed: String, given: String },
    #[error("the offer was never listed")]
    NotListed,
    #[error("the offer is withdrawn already")]
    AlreadyWithdrawn,
    #[error("{0}")]
    InvalidRecord(String),
}

impl OfferError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::OtherListing { .. } => "offer_mismatch",
            Self::NotListed => "offer_not_listed",
            Self::AlreadyWithdrawn => "offer_withdrawn",
            Self::InvalidRecord(_) => "invalid_offer",
        }
    }
}

/// What every stored record satisfies.
fn check_record(record: &ProductRecord) -> Result<(), OfferError> {
    crate::text::check("title", &record.title, 300).map_err(OfferError::InvalidRecord)?;
    if record.price.is_negative() {
        return Err(OfferError::InvalidRecord(
            "price must not be negative".into(),
        ));
    }
    if let Some(shipping) = record.shipping {
        if shipping.currency != record.price.currency {
            return Err(OfferError::InvalidRecord(
                "shipping must be in the price's currency".into(),
            ));
        }
        if shipping.is_negative() {
            return Err(OfferError::InvalidRecord(
                "shipping must not be negative".into(),
            ));
        }
    }
    Ok(())
}

impl Aggregate for Offer {
    const TYPE: &'static str = "offer";
    type Command = OfferCommand;
    type Event = OfferEvent;
    type Error = OfferError;

    fn decide(&self, command: OfferCommand) -> Result<Vec<OfferEvent>, OfferError> {
        match command {
            OfferCommand::Ingest {
                merchant,
                offer_id,
                record,
                citation,
                source,
                at,
            } => {
                check_record(&record)?;
                let product_key = ProductKey::of(&merchant, &offer_id, &record);
                match (&self.merchant, &self.offer_id) {
                    (None, _) | (_, None) => Ok(vec![OfferEvent::OfferListed {
                        merchant,
                        offer_id,
                        product_key,
                        record,
                        citation,
                        source,
                        at,
                    }]),
                    (Some(listed_merchant), Some(listed_offer))
                        if *listed_merchant != merchant || *listed_offer != offer_id =>
                    {
                        Err(OfferError::OtherListing {
                            listed: format!("{listed_merchant}/{listed_offer}"),
                            given: format!("{merchant}/{offer_id}"),
                        })
                    }
                    _ if !self.withdrawn && self.record.as_ref() == Some(&*record) => Ok(vec![]),
                    _ => Ok(vec![OfferEvent::OfferUpdated {
                        product_key,
                        record,
                        citation,
                        source,
                        at,
                    }]),
                }
            }
            OfferCommand::Withdraw { at } => {
                if self.record.is_none() {
                    return Err(OfferError::NotListed);
                }
                if self.withdrawn {
                    return Err(OfferError::AlreadyWithdrawn);
                }
                Ok(vec![OfferEvent::OfferWithdrawn { at }])
            }
        }
    }

    fn apply(&mut self, event: OfferEvent) {
        match event {
            OfferEvent::OfferListed {
                merchant,
                offer_id,
                record,
                citation,
                ..
            } => {
                self.merchant = Some(merchant);
                self.offer_id = Some(offer_id);
                self.record = Some(*record);
                self.citation = citation;
                self.withdrawn = false;
            }
            OfferEvent::OfferUpdated {
                record, citation, ..
            } => {
                self.record = Some(*record);
                self.citation = citation;
                self.withdrawn = false;
            }
            OfferEvent::OfferWithdrawn { .. } => self.withdrawn = true,
        }
    }
}
