//! The shape every aggregate takes: decide on a command, apply an event.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An event: a fact that happened, named in the past tense.
///
/// Events are a public contract. `event_type` and `event_version` are stored with every
/// event; a change to an event's JSON shape bumps its version and gets an upcaster.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static
{
    /// Stable name of the event, e.g. `CartLineAdded`.
    fn event_type(&self) -> &'static str;
    /// Version of this event's JSON shape.
    fn event_version(&self) -> &'static str;
}

/// A consistency boundary: one stream of events, one sequence, one decision at a time.
///
/// `decide` is a pure function of the current state and the command. It returns the
/// events to record, or a rejection; it never mutates state. `apply` folds one event
/// into the state and must accept every event `decide` ever produced, forever.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Aggregate type as stored in the log, e.g. `cart`. Never renamed.
    const TYPE: &'static str;
    /// Version of this state's stored form (its snapshot). Bump it when a change to the
    /// state's fields or to what `apply` makes of an event would read an old snapshot
    /// differently from a replay of the events: snapshots of another version are
    /// ignored and the stream is replayed in full.
    const SNAPSHOT_VERSION: u32 = 1;
    /// Commands are serializable so a retried request can be recognised by its digest,
    /// and cloneable so a command can be decided again after a concurrency conflict.
    type Command: Serialize + Clone + Send + Sync + 'static;
    type Event: DomainEvent;
    type Error: std::error::Error + Send + Sync + 'static;

    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
    fn apply(&mut self, event: Self::Event);
}
