//! shopagent's write side.
//!
//! * [`Database`] opens the event store chosen by configuration — PostgreSQL when a
//!   `postgres://` URL is given, an embedded SQLite file otherwise — and applies the
//!   migrations in `migrations/`.
//! * [`Store`] is the event store: it implements cqrs-es's `PersistedEventRepository`
//!   over one global log, and reads that log in commit order for subscribers.
//! * [`CommandBus`] runs commands against an aggregate with optimistic concurrency,
//!   bounded conflict retries and idempotency keys; a [`Unit`] commits commands on
//!   several aggregates in one transaction.

pub(crate) mod append_group;
pub mod bridge;
pub mod bus;
pub mod checkout;
pub mod database;
pub mod export;
pub mod fulfillment;
pub(crate) mod gather;
pub mod log;
pub mod placed;
pub mod publisher;
pub mod request_claim;
pub mod store;
pub mod subscriber;
#[doc(hidden)]
pub mod test_support;
pub mod trace;
pub mod tracking;
pub mod unit;
pub(crate) mod version_group;

pub use bus::{CommandBus, CommandError, CommandOutcome};
pub use database::{Backend, ConnectError, Database, KeptConnections, Lent, StoreConfig};
pub use log::{LogCursor, LogPage, StoredEvent};
pub use request_claim::{ClaimOutcome, RequestClaim, with_request_claim};
pub use store::{AppendError, Store, StoreError, StreamAppend};
pub use subscriber::{HandlerError, Progress, Subscriber, SubscriberRunner};
pub use unit::{Unit, UnitError};
