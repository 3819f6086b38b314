//! Reading the global log in commit order, for subscribers.
//!
//! PostgreSQL hands out positions when rows are inserted, but transactions commit in any
//! order, so "everything above the last position I saw" skips a transaction that took a
//! lower position and committed later. The reader therefore only returns events whose
//! appending transaction is older than every transaction still running
//! (`txid < pg_snapshot_xmin(pg_current_snapshot())`) — those are final — ordered by
//! `(txid, position)`, and a subscriber checkpoints that pair. A transaction that starts
//! later always gets a larger txid, so nothing can appear behind a checkpoint.
//!
//! SQLite has a single writer, so position order is commit order and the cursor's
//! `txid` is always 0.

use serde_json::Value;
use shopagent_domain::EventMetadata;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::database::Database;
use crate::store::{Store, StoreError, parse_json};

/// A subscriber's place in the log: the last event it has taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogCursor {
    /// Id of the transaction that appended the event (PostgreSQL); 0 on SQLite.
    pub txid: i64,
    pub position: i64,
}

impl LogCursor {
    /// Before the first event.
    pub const START: Self = Self {
        txid: 0,
        position: 0,
    };
}

/// One event as stored in the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub cursor: LogCursor,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: EventMetadata,
    pub recorded_at: OffsetDateTime,
}

impl StoredEvent {
    /// Global position: unique and increasing in insertion order.
    pub fn position(&self) -> i64 {
        self.cursor.position
    }
}

const LOG_COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, sequence, event_type,
     event_version, payload, metadata, recorded_at";

impl Store {
    /// Up to `limit` events after `after`, in commit order. An event is returned only
    /// once every event that can ever sort before it is visible too.
    pub async fn read_log(
        &self,
        after: LogCursor,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match self.database() {
            Database::Postgres(pool) => {
                let sql = format!(
                    "SELECT {LOG_COLUMNS}, txid::text::bigint AS txid_number FROM events
                      WHERE (txid, position) > ($1::bigint::text::xid8, $2)
                        AND txid < pg_snapshot_xmin(pg_current_snapshot())
                      ORDER BY txid, position
                      LIMIT $3"
                );
                let rows = sqlx::query(&sql)
                    .bind(after.txid)
                    .bind(after.position)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(pg_stored_event).collect()
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {LOG_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(after.position)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(sqlite_stored_event).collect()
            }
        }
    }

    /// The highest position in the log (0 when empty).
    pub async fn head_position(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COALESCE(MAX(position), 0) FROM events";
        let head: i64 = match self.database() {
            Database::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Database::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        };
        Ok(head)
    }

    /// When the next event after `after` (in commit order) was recorded: how long the
    /// oldest event a reader has not handled has been waiting. `None` when none waits.
    pub async fn next_recorded_at(
        &self,
        after: LogCursor,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        match self.database() {
            Database::Postgres(pool) => Ok(sqlx::query_scalar(
                "SELECT recorded_at FROM events
                  WHERE (txid, position) > ($1::bigint::text::xid8, $2)
                  ORDER BY txid, position LIMIT 1",
            )
            .bind(after.txid)
            .bind(after.position)
            .fetch_optional(pool)
            .await?),
            Database::Sqlite(pool) => {
                let text: Option<String> = sqlx::query_scalar(
                    "SELECT recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT 1",
                )
                .bind(after.position)
                .fetch_optional(pool)
                .await?;
                text.as_deref().map(parse_timestamp).transpose()
            }
        }
    }

    /// Committed events after `after` whose position is at most `last`: what a reader
    /// that started when the log ended at `last` has still to see.
    pub async fn count_between(&self, after: LogCursor, last: i64) -> Result<i64, StoreError> {
        let count: i64 = match self.database() {
            Database::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM events
                  WHERE (txid, position) > ($1::bigint::text::xid8, $2) AND position <= $3",
                )
                .bind(after.txid)
                .bind(after.position)
                .bind(last)
                .fetch_one(pool)
                .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM events WHERE position > $1 AND position <= $2",
                )
                .bind(after.position)
                .bind(last)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(count)
    }

    /// How many committed events sort after `after`: a subscriber's lag in events.
    pub async fn count_after(&self, after: LogCursor) -> Result<i64, StoreError> {
        let count: i64 = match self.database() {
            Database::Postgres(pool) => sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE (txid, position) > ($1::bigint::text::xid8, $2)",
            )
            .bind(after.txid)
            .bind(after.position)
            .fetch_one(pool)
            .await?,
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT count(*) FROM events WHERE position > $1")
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(count)
    }
}

fn pg_stored_event(row: &PgRow) -> Result<StoredEvent, StoreError> {
    // Decoded straight into the typed struct: no intermediate `Value`.
    let Json(metadata) = row
        .try_get::<Json<EventMetadata>, _>("metadata")
        .map_err(|error| StoreError::Corrupt(format!("event metadata: {error}")))?;
    Ok(StoredEvent {
        cursor: LogCursor {
            txid: row.try_get("txid_number")?,
            position: row.try_get("position")?,
        },
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    })
}

fn sqlite_stored_event(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    let event_id: &str = row.try_get("event_id")?;
    let recorded_at: &str = row.try_get("recorded_at")?;
    Ok(StoredEvent {
        cursor: LogCursor {
            txid: 0,
            position: row.try_get("position")?,
        },
        event_id: Uuid::parse_str(event_id)
            .map_err(|error| StoreError::Corrupt(format!("event_id {event_id:?}: {error}")))?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: parse_json(row.try_get("payload")?)?,
        metadata: serde_json::from_str(row.try_get("metadata")?)
            .map_err(|error| StoreError::Corrupt(format!("event metadata: {error}")))?,
        recorded_at: parse_timestamp(recorded_at)?,
    })
}

/// RFC 3339 in UTC, the form every timestamp takes in SQLite and in read models.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

pub fn parse_timestamp(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|error| StoreError::Corrupt(format!("timestamp {text:?}: {error}")))
}

/// Reads the log page by page from a cursor, fetching the next page while the caller
/// works on the current one, so that the database and the caller's CPU work overlap.
#[derive(Debug)]
pub struct LogPages {
    store: Store,
    limit: u32,
    cursor: LogCursor,
    next: Option<tokio::task::JoinHandle<Result<Vec<StoredEvent>, StoreError>>>,
}

impl LogPages {
    pub fn new(store: Store, after: LogCursor, limit: u32) -> Self {
        Self {
            store,
            limit,
            cursor: after,
            next: None,
        }
    }

    /// The next page after the last one returned (empty at the visible end of the log;
    /// asking again reads again from there).
    pub async fn next_page(&mut self) -> Result<Vec<StoredEvent>, StoreError> {
        let page = match self.next.take() {
            Some(reading) => reading
                .await
                .map_err(|error| StoreError::Corrupt(format!("log reader stopped: {error}")))??,
            None => self.store.read_log(self.cursor, self.limit).await?,
        };
        if let Some(last) = page.last() {
            self.cursor = last.cursor;
            let (store, cursor, limit) = (self.store.clone(), self.cursor, self.limit);
            self.next = Some(tokio::spawn(
                async move { store.read_log(cursor, limit).await },
            ));
        }
        Ok(page)
    }
}

impl Drop for LogPages {
    fn drop(&mut self) {
        if let Some(reading) = self.next.take() {
            reading.abort();
        }
    }
}
