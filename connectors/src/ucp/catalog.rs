//! The UCP catalog capability (`dev.ucp.shopping.catalog.search`), REST binding:
//! `POST /catalog/search` with an optional query and a cursor page. A request without a
//! query and without filters is a browse of the whole catalogue: the feed.
//!
//! Each variant of each product is one offer: its id is what checkout names as the
//! item, its price is in minor units with an ISO currency, its availability and
//! barcodes are the spec's. What UCP's catalog does not carry (shipping, delivery
//! time, returns) is left unstated, and normalization reports it missing.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shopagent_domain::ids::OfferId;
use shopagent_domain::money::Currency;
use shopagent_domain::offer::normalize::RawOffer;
use shopagent_domain::ports::{CatalogueItem, CataloguePage, CatalogueQuery};

#[derive(Debug, Serialize)]
pub struct SearchRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    pub pagination: PageRequest<'a>,
}

#[derive(Debug, Serialize)]
pub struct PageRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<&'a str>,
    pub limit: u32,
}

#[derive(Debug, Deserialize)]
pub struct SearchResponse {
    #[serde(default)]
    pub products: Vec<serde_json::Value>,
    #[serde(default)]
    pub pagination: Option<PageResponse>,
}

#[derive(Debug, Deserialize)]
pub struct PageResponse {
    pub cursor: Option<String>,
    #[serde(default)]
    pub has_next_page: bool,
}

#[derive(Debug, Deserialize)]
struct Product {
    title: String,
    brand: Option<String>,
    url: Option<String>,
    #[serde(default)]
    categories: Vec<Category>,
    #[serde(default)]
    variants: Vec<serde_json::Value>,
    rating: Option<Rating>,
}

#[derive(Debug, Deserialize)]
struct Category {
    value: String,
}

#[derive(Debug, Deserialize)]
struct Rating {
    value: Option<f64>,
    scale_max: Option<f64>,
    count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    id: String,
    title: Option<String>,
    sku: Option<String>,
    #[serde(default)]
    barcodes: Vec<Barcode>,
    url: Option<String>,
    #[serde(default)]
    categories: Vec<Category>,
    price: Option<Price>,
    availability: Option<Availability>,
}

#[derive(Debug, Deserialize)]
struct Barcode {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct Price {
    amount: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct Availability {
    available: Option<bool>,
    status: Option<String>,
}

impl<'a> SearchRequest<'a> {
    pub fn of(query: &'a CatalogueQuery) -> Self {
        Self {
            query: query.text.as_deref().filter(|t| !t.trim().is_empty()),
            pagination: PageRequest {
                cursor: query.cursor.as_deref(),
                limit: query.limit.max(1),
            },
        }
    }
}

/// `amount` minor units as the decimal a shop would print, e.g. `18900` USD → `189.00`.
fn decimal(amount: i64, currency: &str) -> String {
    let exponent = Currency::parse(currency).map_or(2, |c| c.minor_unit_digits());
    if exponent == 0 {
        return amount.to_string();
    }
    let scale = 10_u64.pow(u32::from(exponent));
    let sign = if amount < 0 { "-" } else { "" };
    let amount = amount.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        amount / scale,
        amount % scale,
        width = usize::from(exponent)
    )
}

/// The first category a person can read (taxonomy ids such as Google's `187` are not).
fn readable(categories: &[Category]) -> Option<String> {
    categories
        .iter()
        .map(|c| c.value.trim())
        .find(|v| !v.is_empty() && !v.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
}

/// A UCP availability as schema.org words normalization reads.
fn availability_words(availability: &Availability) -> Option<String> {
    let status = availability.status.as_deref().map(|s| match s {
        "low_stock" => "LimitedAvailability".to_owned(),
        other => other.to_owned(),
    });
    status.or_else(|| {
        availability
            .available
            .map(|a| if a { "InStock" } else { "OutOfStock" }.to_owned())
    })
}

/// The offers of one product: one per variant.
fn items(product: &serde_json::Value) -> Vec<CatalogueItem> {
    let Ok(parsed) = serde_json::from_value::<Product>(product.clone()) else {
        return Vec::new();
    };
    let gtin_kinds = ["GTIN", "EAN", "UPC", "JAN", "ISBN"];
    parsed
        .variants
        .iter()
        .filter_map(|json| {
            let variant = serde_json::from_value::<Variant>(json.clone()).ok()?;
            let title = match variant.title.as_deref().map(str::trim) {
                Some(t) if !t.is_empty() && t != parsed.title && t != "Default Title" => {
                    format!("{} — {t}", parsed.title)
                }
                _ => parsed.title.clone(),
            };
            let rating = parsed.rating.as_ref();
            let raw = RawOffer {
                title: Some(title),
                brand: parsed.brand.clone(),
                gtin: variant
                    .barcodes
                    .iter()
                    .find(|b| gtin_kinds.contains(&b.kind.to_ascii_uppercase().as_str()))
                    .map(|b| b.value.clone()),
                mpn: None,
                sku: variant.sku.clone(),
                category: readable(&variant.categories).or_else(|| readable(&parsed.categories)),
                price: variant
                    .price
                    .as_ref()
                    .map(|p| decimal(p.amount, &p.currency)),
                currency: variant.price.as_ref().map(|p| p.currency.clone()),
                shipping: None,
                availability: variant.availability.as_ref().and_then(availability_words),
                delivery_days: None,
                return_days: None,
                return_fees: None,
                rating: rating.and_then(|r| r.value).map(|v| v.to_string()),
                best_rating: rating.and_then(|r| r.scale_max).map(|v| v.to_string()),
                review_count: rating.and_then(|r| r.count).map(|v| v.to_string()),
                url: variant.url.clone().or_else(|| parsed.url.clone()),
            };
            // What the merchant said of this offer: the product with this variant alone.
            let mut said = product.clone();
            said["variants"] = serde_json::Value::Array(vec![json.clone()]);
            let digest = hex::encode(Sha256::digest(said.to_string().as_bytes()));
            Some(CatalogueItem {
                offer_id: OfferId::parse(&variant.id).ok(),
                merchant_ref: variant.id,
                raw,
                digest,
            })
        })
        .collect()
}

/// The page a search answered.
pub fn page(response: SearchResponse) -> CataloguePage {
    let next_cursor = response
        .pagination
        .filter(|p| p.has_next_page)
        .and_then(|p| p.cursor);
    CataloguePage {
        items: response.products.iter().flat_map(items).collect(),
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_print_as_the_currency_writes_them() {
        assert_eq!(decimal(18_900, "USD"), "189.00");
        assert_eq!(decimal(5, "EUR"), "0.05");
        assert_eq!(decimal(1_500, "JPY"), "1500");
        assert_eq!(decimal(-250, "USD"), "-2.50");
    }

    #[test]
    fn each_variant_is_an_offer_with_its_barcode_and_availability() {
        let product = serde_json::json!({
            "id": "prod_1", "title": "Trail Tent", "brand": "Northwind",
            "description": {"plain": "A tent"},
            "url": "https://shop.example/p/tent",
            "categories": [{"value": "187", "taxonomy": "google_product_category"}, {"value": "Camping > Tents"}],
            "price_range": {"min": {"amount": 18900, "currency": "USD"}, "max": {"amount": 20900, "currency": "USD"}},
            "variants": [
                {"id": "sku:tent-green", "title": "Green", "description": {"plain": ""},
                 "price": {"amount": 18900, "currency": "USD"},
                 "barcodes": [{"type": "UPC", "value": "012345678905"}],
                 "availability": {"available": true, "status": "low_stock"}},
                {"id": "not a valid id!", "title": "Grey", "description": {"plain": ""},
                 "price": {"amount": 20900, "currency": "USD"}}
            ]
        });
        let found = items(&product);
        assert_eq!(found.len(), 2);
        let green = &found[0];
        assert_eq!(
            green.offer_id.as_ref().map(|o| o.as_str()),
            Some("sku:tent-green")
        );
        assert_eq!(green.raw.title.as_deref(), Some("Trail Tent — Green"));
        assert_eq!(green.raw.price.as_deref(), Some("189.00"));
        assert_eq!(green.raw.gtin.as_deref(), Some("012345678905"));
        assert_eq!(green.raw.category.as_deref(), Some("Camping > Tents"));
        assert_eq!(
            green.raw.availability.as_deref(),
            Some("LimitedAvailability")
        );
        assert_eq!(found[1].offer_id, None, "reported, not guessed");
        assert_eq!(found[1].merchant_ref, "not a valid id!");
    }
}
