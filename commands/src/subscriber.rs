//! Checkpointed subscribers with side effects: process managers, publishers.
//!
//! Unlike a projection, a subscriber's work happens outside the database transaction
//! (it issues commands, calls merchants, publishes to a broker), so it cannot commit
//! with its checkpoint. It is therefore *at least once*: an event whose handling
//! succeeded but whose checkpoint was not yet saved is handled again after a crash, and
//! every handler must be idempotent — derive idempotency keys from the event id.
//!
//! On PostgreSQL a subscriber runs on one instance at a time: its runner holds a
//! session advisory lock named after it, on a connection of its own; if the instance
//! dies, the connection closes, the lock is released and another instance takes over.
//! The embedded SQLite store serves a single process.

use std::sync::Arc;
use std::time::Duration;

use crate::log::format_timestamp;
use crate::{Database, LogCursor, Store, StoreError, StoredEvent};
use sqlx::PgConnection;
use sqlx::pool::PoolConnection;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Why a step could not run: the store failed. The step is retried.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] sqlx::Error),
}

/// Why handling an event failed. The event is handled again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// A side-effecting reader of the log.
#[async_trait::async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Stable name: the key of its checkpoint and of its lease.
    fn name(&self) -> &'static str;

    /// Handles one event, at least once. Must be idempotent.
    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError>;
}

/// Feeds one subscriber from the log.
#[derive(Clone)]
pub struct SubscriberRunner {
    store: Store,
    subscriber: Arc<dyn Subscriber>,
    batch_size: u32,
    idle_poll: Duration,
    last_error: Arc<std::sync::Mutex<LastError>>,
}

impl std::fmt::Debug for SubscriberRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberRunner")
            .field("subscriber", &self.subscriber.name())
            .finish()
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub handled: usize,
    /// A handler failed; the checkpoint stays before the failed event.
    pub failed: bool,
}

/// What the last failed step reported, for status and tests.
pub type LastError = Option<String>;

impl SubscriberRunner {
    pub fn new(store: Store, subscriber: Arc<dyn Subscriber>) -> Self {
        Self {
            store,
            subscriber,
            batch_size: 100,
            idle_poll: Duration::from_millis(250),
            last_error: Arc::default(),
        }
    }

    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn name(&self) -> &'static str {
        self.subscriber.name()
    }

    /// The error of the last failed event, if any.
    pub fn last_error(&self) -> LastError {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Handles the events after the checkpoint, in order, moving the checkpoint past
    /// each one as soon as it is handled. Stops at the first failure.
    pub async fn step(&self) -> Result<Progress, SubscriberError> {
        let name = self.name();
        let mut cursor = checkpoint(self.store.database(), name).await?;
        let events = self.store.read_log(cursor, self.batch_size).await?;
        let mut handled = 0;
        for event in &events {
            if let Err(error) = self.subscriber.handle(event).await {
                tracing::warn!(subscriber = name, position = event.position(), %error, "event handling failed; will retry");
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
                return Ok(Progress {
                    handled,
                    failed: true,
                });
            }
            cursor = event.cursor;
            save(self.store.database(), name, cursor).await?;
            handled += 1;
        }
        Ok(Progress {
            handled,
            failed: false,
        })
    }

    /// Handles events until `shutdown` fires, holding the subscriber's lease meanwhile.
    /// Failures are retried with backoff; they never end the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.name();
        let _lease = match Lease::acquire(self.store.database(), name, &shutdown).await {
            Some(lease) => lease,
            None => return,
        };
        tracing::info!(subscriber = name, "subscriber started");
        let mut appended = self.store.subscribe_appends();
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let pause = match self.step().await {
                Ok(Progress {
                    handled,
                    failed: false,
                }) if handled > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(Progress { failed: false, .. }) => {
                    failures = 0;
                    self.idle_poll
                }
                Ok(Progress { failed: true, .. }) => {
                    failures = failures.saturating_add(1);
                    backoff(failures)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(subscriber = name, %error, "subscriber step failed");
                    backoff(failures)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = appended.changed(), if failures == 0 => {
                    if changed.is_err() {
                        tokio::time::sleep(pause).await;
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!(subscriber = name, "subscriber stopped");
    }
}

/// Pause before retrying after `failures` consecutive failures: 200 ms doubling to 30 s.
/// Shared by every reader of the log (projections too).
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(9))).min(Duration::from_secs(30))
}

/// The cursor stored for the reader `name` (projection or subscriber), or the start.
pub async fn checkpoint(db: &Database, name: &str) -> Result<LogCursor, sqlx::Error> {
    const SQL: &str = "SELECT txid, position FROM projection_checkpoints WHERE name = $1";
    let row: Option<(i64, i64)> = match db {
        Database::Postgres(pool) => sqlx::query_as(SQL).bind(name).fetch_optional(pool).await?,
        Database::Sqlite(pool) => sqlx::query_as(SQL).bind(name).fetch_optional(pool).await?,
    };
    Ok(row.map_or(LogCursor::START, |(txid, position)| LogCursor {
        txid,
        position,
    }))
}

async fn save(db: &Database, name: &str, cursor: LogCursor) -> Result<(), SubscriberError> {
    const SQL: &str = "INSERT INTO projection_checkpoints (name, txid, position, events_applied, updated_at)
         VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (name) DO UPDATE SET txid = excluded.txid, position = excluded.position,
             events_applied = projection_checkpoints.events_applied + 1, updated_at = excluded.updated_at";
    let now = format_timestamp(OffsetDateTime::now_utc());
    match db {
        Database::Postgres(pool) => sqlx::query(SQL)
            .bind(name)
            .bind(cursor.txid)
            .bind(cursor.position)
            .bind(&now)
            .execute(pool)
            .await
            .map(drop)?,
        Database::Sqlite(pool) => sqlx::query(SQL)
            .bind(name)
            .bind(cursor.txid)
            .bind(cursor.position)
            .bind(&now)
            .execute(pool)
            .await
            .map(drop)?,
    }
    Ok(())
}

/// Exclusive right to run a subscriber: a PostgreSQL session advisory lock held on a
/// connection detached from the pool, so that dropping the lease closes the session and
/// releases the lock (a pooled session would keep it). Nothing on SQLite (one process).
struct Lease {
    _connection: Option<PgConnection>,
}

impl Lease {
    /// Waits until the lease is free or `shutdown` fires (then `None`).
    async fn acquire(db: &Database, name: &str, shutdown: &CancellationToken) -> Option<Self> {
        let Database::Postgres(pool) = db else {
            return Some(Self { _connection: None });
        };
        let mut waiting_logged = false;
        loop {
            let attempt = async {
                let mut connection = pool.acquire().await?;
                let locked: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(format!("shopagent.subscriber.{name}"))
                        .fetch_one(&mut *connection)
                        .await?;
                Ok::<_, sqlx::Error>(locked.then(|| PoolConnection::detach(connection)))
            };
            match attempt.await {
                Ok(Some(connection)) => {
                    return Some(Self {
                        _connection: Some(connection),
                    });
                }
                Ok(None) if !waiting_logged => {
                    tracing::info!(
                        subscriber = name,
                        "another instance runs this subscriber; standing by"
                    );
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(subscriber = name, %error, "cannot take the subscriber lease")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
