//! Offer extraction over a set of product pages (`fixtures/product_pages`): JSON-LD
//! (plain, `@graph`, item lists, variants, aggregate offers), microdata, Open Graph,
//! broken markup, pages without a product or a readable price, thousands separators and
//! several currencies. `expected.json` holds what a careful reader finds on each page.
//!
//! Field-level precision (of what was extracted, how much is right) and recall (of what
//! the pages state, how much was extracted) over the whole set are printed and held
//! above a floor: a change that makes extraction worse fails here.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shopagent_connectors::product_page::{PageExtraction, extract};
use shopagent_domain::offer::normalize::{Field, FieldIssue, OfferFields};

const PAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/product_pages");

/// The fields as `expected.json` writes them.
fn observed(fields: &OfferFields) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    let mut put = |name: &'static str, value: Option<Value>| {
        if let Some(value) = value {
            out.insert(name, value);
        }
    };
    put("title", fields.title.clone().map(Value::from));
    put("brand", fields.brand.clone().map(Value::from));
    put("gtin", fields.gtin.as_ref().map(|g| json!(g.as_str())));
    put("mpn", fields.mpn.clone().map(Value::from));
    put(
        "category",
        fields.category.as_ref().map(|c| json!(c.as_str())),
    );
    put(
        "price",
        fields.price.map(|p| json!([p.minor, p.currency.code()])),
    );
    put("shipping", fields.shipping.map(|s| json!(s.minor)));
    put("availability", fields.availability.map(|a| json!(a)));
    put(
        "delivery",
        fields.delivery.map(|d| json!([d.min_days, d.max_days])),
    );
    put(
        "returns",
        fields.returns.map(|r| json!([r.window_days, r.free])),
    );
    put(
        "trust",
        fields.trust.map(|t| json!([t.rating_centi, t.reviews])),
    );
    out
}

fn pages() -> Vec<(String, PageExtraction, Vec<Value>)> {
    let expected: BTreeMap<String, Vec<Value>> = serde_json::from_str(
        &std::fs::read_to_string(format!("{PAGES}/expected.json")).expect("expected.json"),
    )
    .expect("expected.json is JSON");
    expected
        .into_iter()
        .map(|(page, offers)| {
            let html = std::fs::read_to_string(format!("{PAGES}/{page}")).expect("page");
            let url = format!("https://shop.example/{page}");
            let extraction = extract(&html, &url);
            (page, extraction, offers)
        })
        .collect()
}

#[derive(Default, Debug)]
struct Tally {
    right: u32,
    wrong: u32,
    missed: u32,
}

#[test]
fn extraction_precision_and_recall_stay_above_their_floor() {
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut mistakes = Vec::new();
    for (page, extraction, expected) in pages() {
        assert_eq!(
            extraction.offers.len(),
            expected.len(),
            "{page}: offers found {:#?}",
            extraction.offers
        );
        for (n, (offer, wanted)) in extraction.offers.iter().zip(&expected).enumerate() {
            let got = observed(&offer.normalized.fields);
            let wanted = wanted.as_object().expect("an object per offer");
            let names: std::collections::BTreeSet<&str> = got
                .keys()
                .copied()
                .chain(wanted.keys().map(String::as_str))
                .collect();
            for name in names {
                let tally = tallies.entry(name.to_owned()).or_default();
                match (got.get(name), wanted.get(name)) {
                    (Some(g), Some(w)) if g == w => tally.right += 1,
                    (Some(g), w) => {
                        tally.wrong += 1;
                        mistakes.push(format!("{page} #{n} {name}: got {g}, expected {w:?}"));
                    }
                    (None, Some(w)) => {
                        tally.missed += 1;
                        mistakes.push(format!("{page} #{n} {name}: missed {w}"));
                    }
                    (None, None) => {}
                }
            }
        }
    }
    let (mut right, mut wrong, mut missed) = (0, 0, 0);
    println!("| field | right | wrong | missed | precision | recall |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, tally) in &tallies {
        right += tally.right;
        wrong += tally.wrong;
        missed += tally.missed;
        println!(
            "| {name} | {} | {} | {} | {:.3} | {:.3} |",
            tally.right,
            tally.wrong,
            tally.missed,
            f64::from(tally.right) / f64::from((tally.right + tally.wrong).max(1)),
            f64::from(tally.right) / f64::from((tally.right + tally.missed + tally.wrong).max(1)),
        );
    }
    let precision = f64::from(right) / f64::from(right + wrong);
    let recall = f64::from(right) / f64::from(right + wrong + missed);
    println!("| all | {right} | {wrong} | {missed} | {precision:.3} | {recall:.3} |");
    for mistake in &mistakes {
        println!("{mistake}");
    }
    // Floors: what this extractor measured when the set was written, less a margin
    // for pages added later.
    assert!(precision >= 0.98, "precision {precision:.3}: {mistakes:#?}");
    assert!(recall >= 0.95, "recall {recall:.3}: {mistakes:#?}");
}

#[test]
fn what_the_page_does_not_state_is_reported_never_guessed() {
    let pages = pages();
    let page = |name: &str| {
        pages
            .iter()
            .find(|(page, ..)| page == name)
            .map(|(_, extraction, _)| extraction)
            .expect("page in the set")
    };
    // A price in dollars with no currency stated: which dollars is not guessed.
    let dollars = &page("dollar_sign_only.html").offers[0].normalized;
    assert!(dollars.record.is_none());
    assert!(dollars.issues.iter().any(|issue| matches!(
        issue,
        FieldIssue::Unreadable { field: Field::Price, value, .. } if value == "$129.99"
    )));
    // A price range is not a price.
    let range = &page("missing_price.html").offers[0].normalized;
    assert!(range.record.is_none());
    assert!(range.issues.contains(&FieldIssue::Missing {
        field: Field::Price
    }));
    // Broken JSON-LD is noted; the microdata on the same page still counts.
    let broken = page("broken_markup.html");
    assert_eq!(broken.notes.len(), 1, "{:?}", broken.notes);
    assert!(broken.offers[0].normalized.record.is_some());
    // An article is not an offer.
    assert!(page("no_product.html").offers.is_empty());
}

#[test]
fn every_offer_cites_its_page_by_url_and_digest() {
    let html = std::fs::read_to_string(format!("{PAGES}/jsonld_complete.html")).expect("page");
    let extraction = extract(&html, "https://acme.example/p/trail-2?ref=feed");
    assert_eq!(extraction.url, "https://acme.example/p/trail-2?ref=feed");
    assert_eq!(extraction.digest.len(), 64);
    assert_eq!(
        extract(&html, "https://x.example/").digest,
        extraction.digest
    );
    let changed = html.replace("1299.00", "1199.00");
    assert_ne!(
        extract(&changed, "https://x.example/").digest,
        extraction.digest
    );
    // The offer's own URL when the page states one.
    assert_eq!(
        extraction.offers[0].raw.url.as_deref(),
        Some("https://acme.example/p/trail-2")
    );
}

#[test]
fn any_input_is_read_without_panicking() {
    for html in [
        "",
        "<",
        "<script type=\"application/ld+json\">",
        "<script type=\"application/ld+json\">{\"@type\":\"Product\",\"offers\":[[[]]]}</script>",
        "<script type=\"application/ld+json\">{\"@type\":\"Product\",\"name\":{\"name\":{\"name\":1}},\"offers\":{\"price\":{\"a\":1}}}</script>",
        "<div itemscope itemtype=\"https://schema.org/Product\"><div itemprop=\"offers\" itemscope><span itemprop=\"price\">٣٤</span></div></div>",
        "<meta property=\"product:price:amount\" content=\"1e308\">",
    ] {
        let _ = extract(html, "https://x.example/");
    }
}
