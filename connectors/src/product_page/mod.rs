//! Offers read from a product page: schema.org `Product`/`Offer` in JSON-LD, in
//! microdata, or Open Graph product tags — in that order of preference.
//!
//! What the page states is taken as text into [`RawOffer`]s and normalized by the
//! domain's rules; nothing is inferred from prose. A page with several products, or a
//! product with several offers (sellers, variants), gives one offer each. When a page
//! holds a single offer, fields one syntax leaves out are filled from the others. The
//! page's SHA-256 and URL go with every offer as its citation.

mod jsonld;
mod microdata;
mod opengraph;

use scraper::Html;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shopagent_domain::offer::normalize::{Normalized, RawOffer, normalize};

/// Which markup an offer was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Syntax {
    JsonLd,
    Microdata,
    OpenGraph,
}

/// One offer found on the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageOffer {
    /// Where its fields came from: the first syntax, then those that filled gaps.
    pub syntaxes: Vec<Syntax>,
    pub raw: RawOffer,
    pub normalized: Normalized,
}

/// What a page yielded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageExtraction {
    pub url: String,
    /// SHA-256 of the page's bytes, hex.
    pub digest: String,
    pub offers: Vec<PageOffer>,
    /// Markup that was there but could not be read (a JSON-LD block that is not JSON).
    pub notes: Vec<String>,
}

/// Reads the offers of the page at `url` whose HTML is `html`.
pub fn extract(html: &str, url: &str) -> PageExtraction {
    let digest = hex::encode(Sha256::digest(html.as_bytes()));
    let document = Html::parse_document(html);
    let mut notes = Vec::new();
    let from_json_ld = jsonld::offers(&document, &mut notes);
    let from_microdata = microdata::offers(&document);
    let from_open_graph = opengraph::offer(&document);

    let mut sources = [
        (Syntax::JsonLd, from_json_ld),
        (Syntax::Microdata, from_microdata),
        (Syntax::OpenGraph, from_open_graph.into_iter().collect()),
    ]
    .into_iter()
    .filter(|(_, offers)| !offers.is_empty());
    let mut found: Vec<(Vec<Syntax>, RawOffer)> = match sources.next() {
        Some((syntax, raws)) => raws.into_iter().map(|raw| (vec![syntax], raw)).collect(),
        None => vec![],
    };
    // One offer on the page: what one syntax leaves out, another may state.
    if let [(syntaxes, only)] = &mut found[..] {
        for (syntax, raws) in sources {
            if let [other] = &raws[..]
                && fill_gaps(only, other)
            {
                syntaxes.push(syntax);
            }
        }
    }
    let offers = found
        .into_iter()
        .map(|(syntaxes, mut raw)| {
            if raw.url.is_none() {
                raw.url = Some(url.to_owned());
            }
            PageOffer {
                syntaxes,
                normalized: normalize(&raw),
                raw,
            }
        })
        .collect();
    PageExtraction {
        url: url.to_owned(),
        digest,
        offers,
        notes,
    }
}

/// Fills `offer`'s empty fields from `other`; whether any was filled.
fn fill_gaps(offer: &mut RawOffer, other: &RawOffer) -> bool {
    let before = offer.clone();
    let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
        if mine.is_none() {
            mine.clone_from(theirs);
        }
    };
    fill(&mut offer.title, &other.title);
    fill(&mut offer.brand, &other.brand);
    fill(&mut offer.gtin, &other.gtin);
    fill(&mut offer.mpn, &other.mpn);
    fill(&mut offer.sku, &other.sku);
    fill(&mut offer.category, &other.category);
    // A price and its currency come together from one source, or not at all.
    if offer.price.is_none() {
        offer.price.clone_from(&other.price);
        offer.currency.clone_from(&other.currency);
    }
    fill(&mut offer.shipping, &other.shipping);
    fill(&mut offer.availability, &other.availability);
    fill(&mut offer.delivery_days, &other.delivery_days);
    if offer.return_days.is_none() {
        offer.return_days.clone_from(&other.return_days);
        offer.return_fees.clone_from(&other.return_fees);
    }
    if offer.rating.is_none() {
        offer.rating.clone_from(&other.rating);
        offer.best_rating.clone_from(&other.best_rating);
        offer.review_count.clone_from(&other.review_count);
    }
    fill(&mut offer.url, &other.url);
    *offer != before
}

/// Text with its whitespace collapsed; `None` when empty.
fn clean(text: &str) -> Option<String> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!text.is_empty()).then_some(text)
}
