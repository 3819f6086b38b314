//! schema.org `Product` in `<script type="application/ld+json">` blocks: top-level
//! objects, arrays, `@graph`, `ItemList` elements and `ProductGroup` variants, with
//! `Offer`, `AggregateOffer` (its listed offers), shipping details, return policy and
//! aggregate rating.

use scraper::{Html, Selector};
use serde_json::Value;
use shopagent_domain::offer::normalize::RawOffer;

use super::clean;

pub(super) fn offers(document: &Html, notes: &mut Vec<String>) -> Vec<RawOffer> {
    let Ok(scripts) = Selector::parse(r#"script[type="application/ld+json"]"#) else {
        return vec![];
    };
    let mut offers = Vec::new();
    for (index, script) in document.select(&scripts).enumerate() {
        let text: String = script.text().collect();
        match serde_json::from_str::<Value>(text.trim()) {
            Ok(value) => {
                let mut products = Vec::new();
                collect_products(&value, &mut products);
                offers.extend(products.into_iter().flat_map(product_offers));
            }
            Err(error) => notes.push(format!(
                "JSON-LD block {} is not JSON ({error}); skipped",
                index + 1
            )),
        }
    }
    offers
}

fn has_type(node: &Value, wanted: &str) -> bool {
    let matches = |t: &Value| {
        t.as_str()
            .is_some_and(|t| t.rsplit(['/', ':']).next() == Some(wanted))
    };
    match node.get("@type") {
        Some(Value::Array(types)) => types.iter().any(matches),
        Some(t) => matches(t),
        None => false,
    }
}

/// Every `Product` node, depth first, in document order. A `ProductGroup` stands for
/// its variants.
fn collect_products<'a>(node: &'a Value, found: &mut Vec<&'a Value>) {
    match node {
        Value::Array(items) => items.iter().for_each(|item| collect_products(item, found)),
        Value::Object(object) => {
            if has_type(node, "ProductGroup")
                && let Some(variants) = object.get("hasVariant")
            {
                collect_products(variants, found);
                return;
            }
            if has_type(node, "Product") {
                found.push(node);
                return;
            }
            for key in ["@graph", "itemListElement", "item", "mainEntity"] {
                if let Some(inner) = object.get(key) {
                    collect_products(inner, found);
                }
            }
        }
        _ => {}
    }
}

/// A value as text: strings as they are, numbers as written.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => clean(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => items.iter().find_map(|item| text(Some(item))),
        Value::Object(object) => text(object.get("name").or_else(|| object.get("@id"))),
        _ => None,
    }
}

/// The first of `keys` that `node` states.
fn first(node: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| text(node.get(*key)))
}

const GTIN_KEYS: [&str; 5] = ["gtin", "gtin13", "gtin12", "gtin14", "gtin8"];

/// One raw offer per `Offer` of the product (one without a price when it has none).
fn product_offers(product: &Value) -> Vec<RawOffer> {
    let base = RawOffer {
        title: first(product, &["name"]),
        brand: text(product.get("brand")),
        gtin: first(product, &GTIN_KEYS),
        mpn: first(product, &["mpn"]),
        sku: first(product, &["sku", "productID"]),
        category: category(product.get("category")),
        url: first(product, &["url"]),
        ..RawOffer::default()
    };
    let base = with_rating(base, product.get("aggregateRating"));
    let base = with_return_policy(base, product.get("hasMerchantReturnPolicy"));
    let offers = listed_offers(product.get("offers"));
    if offers.is_empty() {
        return vec![base];
    }
    offers
        .into_iter()
        .map(|offer| {
            let mut raw = base.clone();
            let specification = offer.get("priceSpecification").map(|s| match s {
                Value::Array(items) => items.first().unwrap_or(s),
                _ => s,
            });
            raw.price = first(offer, &["price"])
                .or_else(|| specification.and_then(|s| first(s, &["price"])));
            raw.currency = first(offer, &["priceCurrency"])
                .or_else(|| specification.and_then(|s| first(s, &["priceCurrency"])));
            raw.availability = first(offer, &["availability"]);
            if let Some(gtin) = first(offer, &GTIN_KEYS) {
                raw.gtin = Some(gtin);
            }
            if let Some(sku) = first(offer, &["sku"]) {
                raw.sku = Some(sku);
            }
            if let Some(url) = first(offer, &["url"]) {
                raw.url = Some(url);
            }
            let raw = with_shipping(raw, offer.get("shippingDetails"));
            with_return_policy(raw, offer.get("hasMerchantReturnPolicy"))
        })
        .collect()
}

/// The offers an `offers` value lists: an `Offer`, an array of them, or an
/// `AggregateOffer`'s own `offers` (its price range alone is not one price).
fn listed_offers(offers: Option<&Value>) -> Vec<&Value> {
    match offers {
        Some(Value::Array(items)) => items.iter().flat_map(|i| listed_offers(Some(i))).collect(),
        Some(offer @ Value::Object(object)) => {
            if has_type(offer, "AggregateOffer") {
                match object.get("offers") {
                    Some(inner) => listed_offers(Some(inner)),
                    None => vec![],
                }
            } else {
                vec![offer]
            }
        }
        _ => vec![],
    }
}

fn category(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(|i| text(Some(i))).collect();
            (!parts.is_empty()).then(|| parts.join(" > "))
        }
        other => text(Some(other)),
    }
}

fn with_rating(mut raw: RawOffer, rating: Option<&Value>) -> RawOffer {
    if let Some(rating) = rating {
        raw.rating = first(rating, &["ratingValue"]);
        raw.best_rating = first(rating, &["bestRating"]);
        raw.review_count = first(rating, &["reviewCount", "ratingCount"]);
    }
    raw
}

fn with_return_policy(mut raw: RawOffer, policy: Option<&Value>) -> RawOffer {
    let Some(policy) = policy.map(|p| match p {
        Value::Array(items) => items.first().unwrap_or(p),
        _ => p,
    }) else {
        return raw;
    };
    let not_permitted = first(policy, &["returnPolicyCategory"])
        .is_some_and(|c| c.ends_with("MerchantReturnNotPermitted"));
    if not_permitted {
        raw.return_days = Some("0".into());
    } else if let Some(days) = first(policy, &["merchantReturnDays"]) {
        raw.return_days = Some(days);
    }
    if let Some(fees) = first(policy, &["returnFees"]) {
        raw.return_fees = Some(fees);
    }
    raw
}

fn with_shipping(mut raw: RawOffer, details: Option<&Value>) -> RawOffer {
    let Some(details) = details.map(|d| match d {
        Value::Array(items) => items.first().unwrap_or(d),
        _ => d,
    }) else {
        return raw;
    };
    if let Some(rate) = details.get("shippingRate") {
        raw.shipping = first(rate, &["value", "price"]);
        if let Some(currency) = first(rate, &["currency"])
            && raw.currency.as_deref().is_some_and(|c| c != currency)
        {
            // A rate in another currency than the price is not this price's shipping.
            raw.shipping = None;
        }
    }
    if let Some(time) = details.get("deliveryTime") {
        let bound = |part: &str, key: &str| -> Option<u32> {
            time.get(part)
                .and_then(|t| first(t, &[key]))
                .and_then(|v| v.parse().ok())
        };
        let min = bound("handlingTime", "minValue").zip(bound("transitTime", "minValue"));
        let max = bound("handlingTime", "maxValue").zip(bound("transitTime", "maxValue"));
        if let (Some((h_min, t_min)), Some((h_max, t_max))) = (min, max) {
            raw.delivery_days = Some(format!("{}-{}", h_min + t_min, h_max + t_max));
        }
    }
    raw
}
