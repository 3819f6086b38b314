//! schema.org `Product` in microdata (`itemscope`, `itemtype`, `itemprop`), with its
//! `offers`, `brand` and `aggregateRating` items.

use scraper::{ElementRef, Html, Selector};
use shopagent_domain::offer::normalize::RawOffer;

use super::clean;

/// A property's value: text, or a nested item.
#[derive(Clone)]
enum Property<'a> {
    Text(String),
    Item(ElementRef<'a>),
}

fn item_type_is(element: ElementRef<'_>, wanted: &str) -> bool {
    element.value().attr("itemtype").is_some_and(|types| {
        types
            .split_whitespace()
            .any(|t| t.trim_end_matches('/').rsplit('/').next() == Some(wanted))
    })
}

pub(super) fn offers(document: &Html) -> Vec<RawOffer> {
    let Ok(scopes) = Selector::parse("[itemscope][itemtype]") else {
        return vec![];
    };
    document
        .select(&scopes)
        .filter(|scope| item_type_is(*scope, "Product"))
        // A product inside another (a related product, an accessory) is the other's.
        .filter(|scope| {
            !scope
                .ancestors()
                .filter_map(ElementRef::wrap)
                .any(|ancestor| {
                    ancestor.value().attr("itemscope").is_some()
                        && item_type_is(ancestor, "Product")
                })
        })
        .flat_map(product_offers)
        .collect()
}

/// The properties of the item `scope`, in document order; nested items are values,
/// not searched.
fn properties(scope: ElementRef<'_>) -> Vec<(String, Property<'_>)> {
    let mut found = Vec::new();
    for child in scope.children().filter_map(ElementRef::wrap) {
        walk(child, &mut found);
    }
    found
}

fn walk<'a>(element: ElementRef<'a>, found: &mut Vec<(String, Property<'a>)>) {
    let is_item = element.value().attr("itemscope").is_some();
    if let Some(names) = element.value().attr("itemprop") {
        let value = if is_item {
            Property::Item(element)
        } else {
            Property::Text(value_of(element))
        };
        for name in names.split_whitespace() {
            found.push((name.to_owned(), value.clone()));
        }
    }
    if !is_item {
        for child in element.children().filter_map(ElementRef::wrap) {
            walk(child, found);
        }
    }
}

/// A property's text, as microdata defines it per element, preferring a `content`
/// attribute wherever pages put one (`<span itemprop="price" content="1299.00">`).
fn value_of(element: ElementRef<'_>) -> String {
    let el = element.value();
    let attribute = match el.name() {
        _ if el.attr("content").is_some() => "content",
        "a" | "link" | "area" => "href",
        "img" | "audio" | "video" | "source" | "iframe" | "embed" => "src",
        "object" => "data",
        "time" if el.attr("datetime").is_some() => "datetime",
        "data" | "meter" => "value",
        _ => "",
    };
    match el.attr(attribute) {
        Some(value) => value.to_owned(),
        None => element.text().collect(),
    }
}

fn text_of(props: &[(String, Property<'_>)], name: &str) -> Option<String> {
    props.iter().find_map(|(key, value)| match value {
        Property::Text(text) if key == name => clean(text),
        Property::Item(item) if key == name => text_of(&properties(*item), "name"),
        _ => None,
    })
}

fn items<'a>(props: &[(String, Property<'a>)], name: &str) -> Vec<ElementRef<'a>> {
    props
        .iter()
        .filter_map(|(key, value)| match value {
            Property::Item(item) if key == name => Some(*item),
            _ => None,
        })
        .collect()
}

fn product_offers(product: ElementRef<'_>) -> Vec<RawOffer> {
    let props = properties(product);
    let gtin = ["gtin", "gtin13", "gtin12", "gtin14", "gtin8"]
        .iter()
        .find_map(|key| text_of(&props, key));
    let mut base = RawOffer {
        title: text_of(&props, "name"),
        brand: text_of(&props, "brand"),
        gtin,
        mpn: text_of(&props, "mpn"),
        sku: text_of(&props, "sku"),
        category: text_of(&props, "category"),
        url: text_of(&props, "url"),
        ..RawOffer::default()
    };
    if let Some(rating) = items(&props, "aggregateRating").first() {
        let rating = properties(*rating);
        base.rating = text_of(&rating, "ratingValue");
        base.best_rating = text_of(&rating, "bestRating");
        base.review_count =
            text_of(&rating, "reviewCount").or_else(|| text_of(&rating, "ratingCount"));
    }
    let offers: Vec<ElementRef<'_>> = items(&props, "offers")
        .into_iter()
        .flat_map(|offer| {
            if item_type_is(offer, "AggregateOffer") {
                items(&properties(offer), "offers")
            } else {
                vec![offer]
            }
        })
        .collect();
    if offers.is_empty() {
        return vec![base];
    }
    offers
        .into_iter()
        .map(|offer| {
            let offer = properties(offer);
            let mut raw = base.clone();
            raw.price = text_of(&offer, "price");
            raw.currency = text_of(&offer, "priceCurrency");
            raw.availability = text_of(&offer, "availability");
            if let Some(url) = text_of(&offer, "url") {
                raw.url = Some(url);
            }
            if let Some(details) = items(&offer, "shippingDetails").first()
                && let Some(rate) = items(&properties(*details), "shippingRate").first()
            {
                raw.shipping = text_of(&properties(*rate), "value");
            }
            if let Some(policy) = items(&offer, "hasMerchantReturnPolicy").first() {
                let policy = properties(*policy);
                raw.return_days = text_of(&policy, "merchantReturnDays");
                raw.return_fees = text_of(&policy, "returnFees");
            }
            raw
        })
        .collect()
}
