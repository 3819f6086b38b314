//! Read models and the projection runner.
//!
//! A [`Projection`] turns events into rows of a read model. A [`ProjectionRunner`]
//! feeds it the global log in commit order, in batches; each batch's read-model writes
//! and the projection's checkpoint commit in one transaction, so a batch is applied
//! exactly once, and a runner that dies resumes from the last committed checkpoint.
//! Read models never learn of events any other way. The offers search index, outside
//! the database, keeps its checkpoint in the index itself ([`SearchIndexer`]).

pub mod catalog;
pub mod orders_hub;
pub mod rebuild;
pub mod reconciliation;
mod rows;
pub mod runner;
pub mod search_index;

pub use catalog::AggregateCatalog;
pub use orders_hub::{OrdersHub, OutsideReference, find_order};
pub use rebuild::{Rebuild, RebuildError, RebuildProgress};
pub use reconciliation::Reconciliation;
pub use runner::{
    Projection, ProjectionError, ProjectionRunner, ProjectionStatus, ReadModelTx, set_paused,
    status,
};
pub use search_index::SearchIndexer;
