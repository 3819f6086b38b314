//! The offer search index behind `domain::ports::OfferIndex`: [`embedded`] (tantivy, the
//! default, no service needed) and [`meilisearch`] (a Meilisearch server).
//!
//! Both page with the same cursor: `o{n}`, the offset of the next page's first match.

pub mod embedded;
pub mod generations;
pub mod meilisearch;

pub use embedded::EmbeddedIndex;
pub use generations::EmbeddedGenerations;
pub use meilisearch::{MeilisearchGenerations, MeilisearchIndex};

use shopagent_domain::ports::IndexError;

/// Where the page a cursor names starts; 0 without one.
fn offset_of(cursor: Option<&str>) -> Result<usize, IndexError> {
    match cursor {
        Some(cursor) => cursor
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| IndexError::InvalidQuery("not a cursor of this index".into())),
        None => Ok(0),
    }
}

/// The cursor of the page starting at `next`, if any match is left.
fn next_cursor(next: usize, total: u64) -> Option<String> {
    ((next as u64) < total).then(|| format!("o{next}"))
}
