//! What the search index holds of an offer, and what a search asks of it. The index
//! itself is a port ([`crate::ports::OfferIndex`]) with an embedded and a Meilisearch
//! backend.

use serde::{Deserialize, Serialize};

use super::{Availability, ProductKey, ProductRecord};
use crate::ids::{MerchantId, OfferId};

/// One listed offer as the index stores it: flat, every filter and facet a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedOffer {
    /// The offer's stream: unique, the document id.
    pub id: String,
    pub tenant: String,
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    pub product_key: ProductKey,
    /// The offer's version when indexed: an older version never replaces a newer one.
    pub version: i64,
    pub record: ProductRecord,
    /// Price plus stated shipping, in minor units of the price's currency.
    pub delivered_minor: i64,
    /// The page it was read from, when it came from one.
    pub citation_url: Option<String>,
}

impl IndexedOffer {
    pub fn new(
        id: String,
        tenant: String,
        merchant: MerchantId,
        offer_id: OfferId,
        version: i64,
        record: ProductRecord,
        citation_url: Option<String>,
    ) -> Self {
        let delivered_minor = record
            .price
            .minor
            .saturating_add(record.shipping.map_or(0, |s| s.minor));
        Self {
            product_key: ProductKey::of(&merchant, &offer_id, &record),
            id,
            tenant,
            merchant,
            offer_id,
            version,
            record,
            delivered_minor,
            citation_url,
        }
    }

    /// Whether it can be ordered now for shipping without waiting for stock.
    pub fn available(&self) -> bool {
        self.record
            .availability
            .is_none_or(Availability::can_ship_now)
    }

    /// Its availability as facets name it; `unknown` when the offer does not say.
    pub fn availability_name(&self) -> &'static str {
        self.record
            .availability
            .map_or("unknown", Availability::as_str)
    }

    /// Whether it may be returned for free (a window of a day or more).
    pub fn free_returns(&self) -> bool {
        self.record
            .returns
            .is_some_and(|r| r.free && r.window_days > 0)
    }

    /// Its category and each node above it, the top first: what a category filter
    /// matches, so that a node holds what lies beneath it.
    pub fn category_path(&self) -> impl Iterator<Item = &str> {
        let category = self.record.category.as_str();
        category
            .match_indices('/')
            .map(move |(end, _)| &category[..end])
            .chain(std::iter::once(category))
    }
}

/// How deep pages reach: a page starts before the first [`MAX_SEARCH_DEPTH`] matches.
/// An index holds every match ahead of the page it answers, so a deeper page would cost
/// memory in proportion to its offset, which a cursor from outside chooses.
pub const MAX_SEARCH_DEPTH: usize = 10_000;

/// The offset a page cursor (`o{offset}`, the same for every index) names, when it is
/// one and starts before [`MAX_SEARCH_DEPTH`].
pub fn cursor_offset(cursor: &str) -> Option<usize> {
    cursor
        .strip_prefix('o')?
        .parse::<usize>()
        .ok()
        .filter(|offset| *offset < MAX_SEARCH_DEPTH)
}

/// The cursor of the page starting at `offset`.
pub fn cursor_at(offset: usize) -> String {
    format!("o{offset}")
}

/// The cursor of the page starting at `next`, if any of `total` matches is left there
/// and it is within reach.
pub fn next_cursor(next: usize, total: u64) -> Option<String> {
    ((next as u64) < total && next < MAX_SEARCH_DEPTH).then(|| cursor_at(next))
}

/// What to search for. Every filter optional; all given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferQuery {
    pub tenant: String,
    /// Words, matched with typo tolerance (one edit in words of 5+ letters, two in 9+).
    pub text: Option<String>,
    /// ISO currency of the price bounds; offers in other currencies are left out when
    /// bounds are given.
    pub currency: Option<String>,
    pub min_price_minor: Option<i64>,
    pub max_price_minor: Option<i64>,
    pub merchants: Vec<String>,
    /// Taxonomy nodes; an offer within any of them matches.
    pub categories: Vec<String>,
    /// Only offers that ship now.
    pub available_only: bool,
    /// Only offers stating delivery within this many business days.
    pub delivery_within_days: Option<u16>,
    pub free_returns_only: bool,
    /// Page size, 1 to 100.
    pub limit: usize,
    /// Where the previous page ended (`o{offset}`, below [`MAX_SEARCH_DEPTH`]).
    pub cursor: Option<String>,
}

/// How many matching offers have each value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facets {
    pub merchant: Vec<(String, u64)>,
    pub category: Vec<(String, u64)>,
    pub availability: Vec<(String, u64)>,
}

/// One page of matches, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    pub hits: Vec<IndexedOffer>,
    /// Every match, on all pages.
    pub total: u64,
    pub facets: Facets,
    pub next_cursor: Option<String>,
}
