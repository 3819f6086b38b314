//! The offer search index behind `domain::ports::OfferIndex`: [`embedded`] (tantivy, the
//! default, no service needed).

pub mod embedded;

pub use embedded::EmbeddedIndex;
