//! Open Graph product tags (`og:title`, `product:price:amount`,
//! `product:price:currency`, `product:availability`, `product:brand`, …): one offer at
//! most, and only when the page says it is about a product or states a price.

use scraper::{Html, Selector};
use shopagent_domain::offer::normalize::RawOffer;

use super::clean;

pub(super) fn offer(document: &Html) -> Option<RawOffer> {
    let metas = Selector::parse("meta[property][content], meta[name][content]").ok()?;
    let tags: Vec<(String, String)> = document
        .select(&metas)
        .filter_map(|meta| {
            let el = meta.value();
            let key = el.attr("property").or_else(|| el.attr("name"))?;
            Some((
                key.trim().to_ascii_lowercase(),
                el.attr("content")?.to_owned(),
            ))
        })
        .collect();
    let tag = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|name| {
            tags.iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| clean(value))
        })
    };
    let price = tag(&["product:price:amount", "og:price:amount"]);
    let is_product = tag(&["og:type"]).is_some_and(|t| t.contains("product"));
    if price.is_none() && !is_product {
        return None;
    }
    Some(RawOffer {
        title: tag(&["og:title"]),
        brand: tag(&["product:brand", "og:brand"]),
        gtin: tag(&["product:ean", "product:upc", "product:gtin", "product:isbn"]),
        mpn: tag(&["product:mfr_part_no"]),
        sku: tag(&["product:retailer_item_id", "product:retailer_part_no"]),
        category: tag(&["product:category"]),
        price,
        currency: tag(&["product:price:currency", "og:price:currency"]),
        shipping: tag(&["product:shipping_cost:amount"]),
        availability: tag(&["product:availability", "og:availability"]),
        url: tag(&["og:url"]),
        ..RawOffer::default()
    })
}
