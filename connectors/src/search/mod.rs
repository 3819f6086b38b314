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

use shopagent_domain::offer::search::{cursor_offset, next_cursor};
use shopagent_domain::ports::IndexError;

/// Where the page a cursor names starts; 0 without one. Pages start before
/// `MAX_SEARCH_DEPTH`: the index holds every match ahead of the page.
fn offset_of(cursor: Option<&str>) -> Result<usize, IndexError> {
    match cursor {
        Some(cursor) => cursor_offset(cursor)
            .ok_or_else(|| IndexError::InvalidQuery("not a cursor of this index".into())),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use shopagent_domain::offer::search::MAX_SEARCH_DEPTH;

    use super::*;

    #[test]
    fn pages_start_within_the_search_depth() {
        assert_eq!(offset_of(None).ok(), Some(0));
        assert_eq!(offset_of(Some("o20")).ok(), Some(20));
        assert_eq!(offset_of(Some("o9999")).ok(), Some(9_999));
        for refused in [
            "o10000",
            "o747511346380935",
            "o18446744073709551615",
            "20",
            "o-1",
        ] {
            assert!(offset_of(Some(refused)).is_err(), "{refused}");
        }
        assert_eq!(next_cursor(20, 100), Some("o20".into()));
        assert_eq!(next_cursor(100, 100), None);
        assert_eq!(next_cursor(MAX_SEARCH_DEPTH, u64::MAX), None);
    }
}
