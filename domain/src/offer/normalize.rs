//! From what a source says (text, as found) to the canonical [`ProductRecord`].
//!
//! Every field is read by a rule or reported: a field the source left out is
//! `missing`, one it wrote in a way no rule reads is `unreadable` with why. A record is
//! made only when the title and the price (with its currency) are read; the other
//! fields stay empty rather than guessed.

use serde::{Deserialize, Serialize};

use super::price::parse_price;
use super::taxonomy::map_category;
use super::{Availability, DeliveryEstimate, Gtin, ProductRecord, ReturnPolicy, TrustSignals};
use crate::ids::Category;
use crate::money::{Currency, Money};

/// What a source says of one offer, as text. Every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawOffer {
    pub title: Option<String>,
    pub brand: Option<String>,
    pub gtin: Option<String>,
    pub mpn: Option<String>,
    /// The merchant's own id for it (SKU).
    pub sku: Option<String>,
    pub category: Option<String>,
    pub price: Option<String>,
    pub currency: Option<String>,
    /// Shipping cost: an amount, or words like "free".
    pub shipping: Option<String>,
    pub availability: Option<String>,
    /// Days to deliver, `"2-4"` or `"3"`.
    pub delivery_days: Option<String>,
    /// Days to return; `"0"`: no returns.
    pub return_days: Option<String>,
    /// Who pays for a return: schema.org `FreeReturn`, `ReturnShippingFees`, … or words.
    pub return_fees: Option<String>,
    pub rating: Option<String>,
    pub best_rating: Option<String>,
    pub review_count: Option<String>,
    /// The page the offer is on, as the source names it.
    pub url: Option<String>,
}

/// The fields of a record, as reports name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Title,
    Brand,
    Gtin,
    Mpn,
    Category,
    Price,
    Shipping,
    Availability,
    Delivery,
    Returns,
    Trust,
}

impl Field {
    /// The name reports use (`price`, `delivery`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::Brand => "brand",
            Self::Gtin => "gtin",
            Self::Mpn => "mpn",
            Self::Category => "category",
            Self::Price => "price",
            Self::Shipping => "shipping",
            Self::Availability => "availability",
            Self::Delivery => "delivery",
            Self::Returns => "returns",
            Self::Trust => "trust",
        }
    }

    pub const ALL: [Field; 11] = [
        Field::Title,
        Field::Brand,
        Field::Gtin,
        Field::Mpn,
        Field::Category,
        Field::Price,
        Field::Shipping,
        Field::Availability,
        Field::Delivery,
        Field::Returns,
        Field::Trust,
    ];
}

/// Why a field is not on the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum FieldIssue {
    /// The source does not say.
    Missing { field: Field },
    /// The source says something no rule reads.
    Unreadable {
        field: Field,
        value: String,
        why: String,
    },
}

impl FieldIssue {
    pub fn field(&self) -> Field {
        match self {
            Self::Missing { field } | Self::Unreadable { field, .. } => *field,
        }
    }
}

/// Every field that could be read, whether or not they make a record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OfferFields {
    pub title: Option<String>,
    pub brand: Option<String>,
    pub gtin: Option<Gtin>,
    pub mpn: Option<String>,
    /// Our taxonomy's node, from the merchant's category or the title.
    pub category: Option<Category>,
    pub merchant_category: Option<String>,
    pub price: Option<Money>,
    pub shipping: Option<Money>,
    pub availability: Option<Availability>,
    pub delivery: Option<DeliveryEstimate>,
    pub returns: Option<ReturnPolicy>,
    pub trust: Option<TrustSignals>,
}

impl OfferFields {
    /// The record these fields make: a title and a price are needed.
    pub fn record(&self) -> Option<ProductRecord> {
        Some(ProductRecord {
            title: self.title.clone()?,
            brand: self.brand.clone(),
            gtin: self.gtin.clone(),
            mpn: self.mpn.clone(),
            category: self.category.clone()?,
            merchant_category: self.merchant_category.clone(),
            price: self.price?,
            shipping: self.shipping,
            availability: self.availability,
            delivery: self.delivery,
            returns: self.returns,
            trust: self.trust,
        })
    }
}

impl From<&ProductRecord> for OfferFields {
    fn from(record: &ProductRecord) -> Self {
        Self {
            title: Some(record.title.clone()),
            brand: record.brand.clone(),
            gtin: record.gtin.clone(),
            mpn: record.mpn.clone(),
            category: Some(record.category.clone()),
            merchant_category: record.merchant_category.clone(),
            price: Some(record.price),
            shipping: record.shipping,
            availability: record.availability,
            delivery: record.delivery,
            returns: record.returns,
            trust: record.trust,
        }
    }
}

/// What could be read, the record when the title and price were, and what could not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalized {
    pub fields: OfferFields,
    pub record: Option<ProductRecord>,
    pub issues: Vec<FieldIssue>,
}

fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Reads `raw` into a record, reporting every field it could not read.
pub fn normalize(raw: &RawOffer) -> Normalized {
    let mut issues = Vec::new();
    let mut unreadable = |field: Field, value: &str, why: String| {
        issues.push(FieldIssue::Unreadable {
            field,
            value: value.chars().take(200).collect(),
            why,
        });
    };
    let mut missing = Vec::new();

    let title = text(&raw.title).map(collapse_whitespace);
    let title = match title {
        Some(title) if crate::text::check("title", &title, 300).is_ok() => Some(title),
        Some(title) => {
            unreadable(
                Field::Title,
                &title,
                "longer than 300 characters or not text".into(),
            );
            None
        }
        None => {
            missing.push(Field::Title);
            None
        }
    };

    let stated = match text(&raw.currency) {
        Some(code) => match Currency::parse(&code.to_ascii_uppercase()) {
            Ok(currency) => Some(currency),
            Err(_) => {
                unreadable(Field::Price, code, "not an ISO 4217 currency".into());
                None
            }
        },
        None => None,
    };
    let price = match text(&raw.price) {
        Some(price) => match parse_price(price, stated) {
            Ok(price) => Some(price),
            Err(error) => {
                unreadable(Field::Price, price, error.to_string());
                None
            }
        },
        None => {
            missing.push(Field::Price);
            None
        }
    };

    let brand = text(&raw.brand).map(collapse_whitespace);
    if brand.is_none() {
        missing.push(Field::Brand);
    }
    let gtin = match text(&raw.gtin) {
        Some(gtin) => match Gtin::parse(gtin) {
            Ok(gtin) => Some(gtin),
            Err(error) => {
                unreadable(Field::Gtin, gtin, error.to_string());
                None
            }
        },
        None => {
            missing.push(Field::Gtin);
            None
        }
    };
    let mpn = text(&raw.mpn).map(str::to_owned);
    if mpn.is_none() {
        missing.push(Field::Mpn);
    }
    let merchant_category = text(&raw.category).map(collapse_whitespace);
    if merchant_category.is_none() {
        missing.push(Field::Category);
    }

    let shipping = match (text(&raw.shipping), price) {
        (Some(words), Some(price)) if is_free(words) => Some(Money::zero(price.currency)),
        (Some(amount), Some(price)) => match parse_price(amount, Some(price.currency)) {
            Ok(shipping) => Some(shipping),
            Err(error) => {
                unreadable(Field::Shipping, amount, error.to_string());
                None
            }
        },
        (Some(_), None) => None,
        (None, _) => {
            missing.push(Field::Shipping);
            None
        }
    };

    let availability = match text(&raw.availability) {
        Some(words) => match Availability::parse(words) {
            Some(availability) => Some(availability),
            None => {
                unreadable(
                    Field::Availability,
                    words,
                    "not a schema.org availability".into(),
                );
                None
            }
        },
        None => {
            missing.push(Field::Availability);
            None
        }
    };

    let delivery = match text(&raw.delivery_days) {
        Some(days) => match parse_days(days) {
            Some(delivery) => Some(delivery),
            None => {
                unreadable(
                    Field::Delivery,
                    days,
                    "not a number of days or a range".into(),
                );
                None
            }
        },
        None => {
            missing.push(Field::Delivery);
            None
        }
    };

    let returns = match text(&raw.return_days) {
        Some(days) => match days.parse::<u16>() {
            Ok(window_days) if window_days <= 366 => {
                let free = text(&raw.return_fees).is_some_and(is_free);
                Some(ReturnPolicy { window_days, free })
            }
            _ => {
                unreadable(Field::Returns, days, "not a number of days".into());
                None
            }
        },
        None => {
            missing.push(Field::Returns);
            None
        }
    };

    let trust = match text(&raw.rating) {
        Some(rating) => {
            let best = text(&raw.best_rating)
                .and_then(|b| b.parse::<f64>().ok())
                .unwrap_or(5.0);
            let reviews = text(&raw.review_count)
                .and_then(|c| c.replace([',', '.', ' '], "").parse::<u32>().ok())
                .unwrap_or(0);
            // "4,8" is 4.8 where the comma is the decimal separator.
            let decimal = if rating.contains('.') {
                rating.to_owned()
            } else {
                rating.replace(',', ".")
            };
            match decimal
                .parse::<f64>()
                .ok()
                .and_then(|r| TrustSignals::new(r, best, reviews))
            {
                Some(trust) => Some(trust),
                None => {
                    unreadable(Field::Trust, rating, format!("not a rating out of {best}"));
                    None
                }
            }
        }
        None => {
            missing.push(Field::Trust);
            None
        }
    };

    issues.extend(
        missing
            .into_iter()
            .map(|field| FieldIssue::Missing { field }),
    );
    issues.sort_by_key(FieldIssue::field);
    let fields = OfferFields {
        category: title
            .as_deref()
            .map(|title| map_category(merchant_category.as_deref(), title)),
        title,
        brand,
        gtin,
        mpn,
        merchant_category,
        price,
        shipping,
        availability,
        delivery,
        returns,
        trust,
    };
    Normalized {
        record: fields.record(),
        fields,
        issues,
    }
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "free", "Free shipping", schema.org `FreeReturn`, or an amount of zero ("0.00").
fn is_free(words: &str) -> bool {
    let lower = words.to_ascii_lowercase();
    let mut digits = lower.chars().filter(char::is_ascii_digit).peekable();
    lower.contains("free") || (digits.peek().is_some() && digits.all(|c| c == '0'))
}

/// `"3"` or `"2-4"` (also `2–4`, `2 to 4`).
fn parse_days(days: &str) -> Option<DeliveryEstimate> {
    let numbers: Vec<u16> = days
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers[..] {
        [days] => DeliveryEstimate::new(days, days),
        [min, max] => DeliveryEstimate::new(min, max),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOffer {
        RawOffer {
            title: Some("  Trail 2\n two-person tent ".into()),
            brand: Some("Northwind".into()),
            gtin: Some("4006381333931".into()),
            mpn: Some("NW-T2".into()),
            category: Some("Sporting Goods > Camping > Tents".into()),
            price: Some("1,299.00".into()),
            currency: Some("usd".into()),
            shipping: Some("Free".into()),
            availability: Some("https://schema.org/InStock".into()),
            delivery_days: Some("2–4".into()),
            return_days: Some("30".into()),
            return_fees: Some("https://schema.org/FreeReturn".into()),
            rating: Some("4.6".into()),
            best_rating: None,
            review_count: Some("1,280".into()),
            ..RawOffer::default()
        }
    }

    #[test]
    fn a_complete_offer_becomes_a_complete_record() {
        let normalized = normalize(&raw());
        assert_eq!(normalized.issues, []);
        let record = normalized.record.expect("record");
        assert_eq!(record.title, "Trail 2 two-person tent");
        assert_eq!(record.price.minor, 129_900);
        assert_eq!(record.price.currency.code(), "USD");
        assert_eq!(record.shipping.map(|s| s.minor), Some(0));
        assert_eq!(record.category.as_str(), "outdoor/camping");
        assert_eq!(record.delivery, DeliveryEstimate::new(2, 4));
        assert_eq!(
            record.returns,
            Some(ReturnPolicy {
                window_days: 30,
                free: true
            })
        );
        assert_eq!(record.trust, TrustSignals::new(4.6, 5.0, 1280));
    }

    #[test]
    fn without_a_title_or_a_readable_price_there_is_no_record() {
        let no_title = RawOffer {
            title: None,
            ..raw()
        };
        let normalized = normalize(&no_title);
        assert!(normalized.record.is_none());
        assert_eq!(
            normalized.issues,
            [FieldIssue::Missing {
                field: Field::Title
            }]
        );

        let dollars = RawOffer {
            price: Some("$19.99".into()),
            currency: None,
            shipping: None,
            ..raw()
        };
        let normalized = normalize(&dollars);
        assert!(normalized.record.is_none());
        assert!(
            matches!(
                &normalized.issues[..],
                [
                    FieldIssue::Unreadable {
                        field: Field::Price,
                        ..
                    },
                    FieldIssue::Missing {
                        field: Field::Shipping
                    }
                ]
            ),
            "{:?}",
            normalized.issues
        );
    }

    #[test]
    fn each_unread_field_is_reported_and_left_empty() {
        let sloppy = RawOffer {
            gtin: Some("4006381333932".into()),
            availability: Some("ask us".into()),
            delivery_days: Some("soon".into()),
            brand: None,
            rating: Some("great".into()),
            ..raw()
        };
        let normalized = normalize(&sloppy);
        let record = normalized.record.expect("title and price suffice");
        assert_eq!(record.gtin, None);
        assert_eq!(record.availability, None);
        let fields: Vec<Field> = normalized.issues.iter().map(FieldIssue::field).collect();
        assert_eq!(
            fields,
            [
                Field::Brand,
                Field::Gtin,
                Field::Availability,
                Field::Delivery,
                Field::Trust
            ]
        );
    }

    #[test]
    fn free_means_free_and_an_amount_is_read_in_the_price_currency() {
        for (words, minor) in [
            ("free", 0),
            ("FREE SHIPPING", 0),
            ("0.00", 0),
            ("4.99", 499),
            ("1,250.00", 125_000),
        ] {
            let offer = RawOffer {
                shipping: Some(words.into()),
                ..raw()
            };
            let record = normalize(&offer).record.expect("record");
            assert_eq!(record.shipping.map(|s| s.minor), Some(minor), "{words}");
        }
    }
}
