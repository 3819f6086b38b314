//! shopagent's domain: aggregates, their commands and events, value types and policies.
//!
//! This crate is pure. It performs no I/O and depends on no runtime, database, HTTP or
//! broker crate; `tests/dependency_rules.rs` reads the workspace manifests and fails if
//! that changes. The write side (`shopagent-commands`) adapts the [`Aggregate`] trait
//! defined here to cqrs-es and its event stores.

pub mod address;
pub mod aggregate;
pub mod cart;
pub mod ids;
pub mod mandate;
pub mod merchant;
pub mod metadata;
pub mod money;
pub mod offer;
pub mod order;
pub mod payment;
pub mod ports;
pub mod reconciliation;
pub mod run;
pub mod serde_time;
pub mod testing;
pub mod text;

pub use aggregate::{Aggregate, DomainEvent};
pub use metadata::{EventMetadata, IdempotencyKey, InvalidIdempotencyKey, MetadataKey};
