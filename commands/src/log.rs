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

use std::ops::{Deref, Range};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shopagent_domain::EventMetadata;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::database::{Backend, Database};
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

/// How long a reader of the log's tail waits for another's read before it reads on its
/// own: a page at the head takes a millisecond or two.
pub const SHARED_READ_WAIT: Duration = Duration::from_millis(50);

/// A page of the log as one reader read it, for the others: see
/// [`Store::read_log_tail`].
#[derive(Debug)]
pub(crate) struct TailPage {
    after: LogCursor,
    limit: u32,
    events: LogPage,
    /// When the read began: a shorter page holds the head as it was then.
    began: Instant,
}

impl TailPage {
    /// The answer to a read of `limit` events after `after` that must hold every event
    /// committed before `since`, if this page holds it.
    fn answer(&self, after: LogCursor, limit: u32, since: Instant) -> Option<LogPage> {
        if after < self.after {
            return None;
        }
        let reached_head = self.events.len() < self.limit as usize;
        let following = self.events.partition_point(|event| event.cursor <= after);
        let available = self.events.len() - following;
        let limit = limit as usize;
        let whole = available >= limit || (reached_head && self.began >= since);
        whole.then(|| {
            self.events
                .slice(following..following + available.min(limit))
        })
    }

    /// Where the page ends: its last event, or where it starts when it holds none.
    fn end(&self) -> LogCursor {
        self.events.last().map_or(self.after, |event| event.cursor)
    }

    /// Whether this page, just read, is kept in place of `kept`: unless it ends before
    /// it. A reader far behind the others (a process with a backlog) reads pages the
    /// readers at the head have passed; kept, each would take the head's page from them
    /// and send every one of them to the database.
    fn replaces(&self, kept: &TailPage) -> bool {
        self.end() >= kept.end()
    }
}

/// Events read from the log, in commit order. A page the readers of the log's tail
/// share is handed to each as a view of the one copy: a reader usually acts on few of
/// the events it reads, and copying each event's payload for every reader was most of
/// what following the log cost.
#[derive(Debug, Clone)]
pub struct LogPage {
    events: Arc<[StoredEvent]>,
    range: Range<usize>,
}

impl LogPage {
    /// The events of this page within `range` (indices into this page).
    fn slice(&self, range: Range<usize>) -> Self {
        Self {
            events: Arc::clone(&self.events),
            range: self.range.start + range.start..self.range.start + range.end,
        }
    }
}

impl From<Vec<StoredEvent>> for LogPage {
    fn from(events: Vec<StoredEvent>) -> Self {
        let range = 0..events.len();
        Self {
            events: events.into(),
            range,
        }
    }
}

impl Deref for LogPage {
    type Target = [StoredEvent];

    fn deref(&self) -> &[StoredEvent] {
        &self.events[self.range.clone()]
    }
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

/// Which events a reader of the log wants, for the database to select. Empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Positions from this one on (inclusive).
    pub from_position: Option<i64>,
    /// Positions up to this one (inclusive).
    pub to_position: Option<i64>,
    /// Recorded at or after.
    pub since: Option<OffsetDateTime>,
    /// Recorded before.
    pub until: Option<OffsetDateTime>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub tenant: Option<String>,
}

/// A value a filter binds.
enum FilterValue {
    Int(i64),
    Text(String),
    Time(OffsetDateTime),
}

impl LogFilter {
    /// Whether `event` passes: the exact test, which the SQL conditions never narrow.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        let position = event.position();
        self.from_position.is_none_or(|from| position >= from)
            && self.to_position.is_none_or(|to| position <= to)
            && self.since.is_none_or(|since| event.recorded_at >= since)
            && self.until.is_none_or(|until| event.recorded_at < until)
            && self
                .aggregate_type
                .as_deref()
                .is_none_or(|t| t == event.aggregate_type)
            && self
                .aggregate_id
                .as_deref()
                .is_none_or(|id| id == event.aggregate_id)
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| t == event.metadata.tenant)
    }

    /// SQL conditions (each starting with ` AND`) numbering their parameters from
    /// `first`, and the values to bind. On SQLite, times compare at the millisecond
    /// (`julianday`), inclusively at both ends: a superset that `matches` then trims.
    fn sql(&self, backend: Backend, first: usize) -> (String, Vec<FilterValue>) {
        let postgres = backend == Backend::Postgres;
        let mut sql = String::new();
        let mut values = Vec::new();
        let mut and = |condition: &dyn Fn(usize) -> String, value: FilterValue| {
            values.push(value);
            sql.push_str(" AND ");
            sql.push_str(&condition(first + values.len() - 1));
        };
        if let Some(from) = self.from_position {
            and(&|n| format!("position >= ${n}"), FilterValue::Int(from));
        }
        if let Some(to) = self.to_position {
            and(&|n| format!("position <= ${n}"), FilterValue::Int(to));
        }
        if let Some(since) = self.since {
            if postgres {
                and(
                    &|n| format!("recorded_at >= ${n}"),
                    FilterValue::Time(since),
                );
            } else {
                and(
                    &|n| format!("julianday(recorded_at) >= julianday(${n})"),
                    FilterValue::Text(format_timestamp(since)),
                );
            }
        }
        if let Some(until) = self.until {
            if postgres {
                and(&|n| format!("recorded_at < ${n}"), FilterValue::Time(until));
            } else {
                and(
                    &|n| format!("julianday(recorded_at) <= julianday(${n})"),
                    FilterValue::Text(format_timestamp(until)),
                );
            }
        }
        if let Some(kind) = &self.aggregate_type {
            and(
                &|n| format!("aggregate_type = ${n}"),
                FilterValue::Text(kind.clone()),
            );
        }
        if let Some(id) = &self.aggregate_id {
            and(
                &|n| format!("aggregate_id = ${n}"),
                FilterValue::Text(id.clone()),
            );
        }
        if let Some(tenant) = &self.tenant {
            let column = if postgres {
                "metadata->>'tenant'"
            } else {
                "json_extract(metadata, '$.tenant')"
            };
            and(
                &|n| format!("{column} = ${n}"),
                FilterValue::Text(tenant.clone()),
            );
        }
        (sql, values)
    }
}

/// Binds a filter's values to a query, whatever its backend.
macro_rules! bind_filter {
    ($query:expr, $values:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                FilterValue::Int(int) => query.bind(*int),
                FilterValue::Text(text) => query.bind(text.as_str()),
                FilterValue::Time(at) => query.bind(*at),
            };
        }
        query
    }};
}

impl Store {
    /// Up to `limit` events after `after`, in commit order. An event is returned only
    /// once every event that can ever sort before it is visible too.
    pub async fn read_log(
        &self,
        after: LogCursor,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_log_matching(after, limit, &LogFilter::default())
            .await
    }

    /// [`Store::read_log`] for the readers that follow the log's head (projections,
    /// processes, the search index), sharing pages: one append wakes every reader, and
    /// they all ask for the same events. The first to ask reads them; the others take
    /// them from its page instead of each reading the log again.
    ///
    /// `since`: the reader needs every event committed before that instant (when it
    /// was woken by an append); `None` reads the database and leaves the shared page
    /// alone, for a reader that is not following the head (a rebuild, a catch-up on
    /// request). A page is answered from memory only when it is what the database
    /// would answer now, or could have answered after `since`:
    /// - a full page (as many events as asked for) holds every event up to its last,
    ///   final by the reader's rule (nothing can ever sort before a visible event), so a
    ///   reader whose cursor is in it is answered from it when it has `limit` events
    ///   after that cursor, whenever it was read;
    /// - a shorter page reached the head as it was when its read began, so it holds
    ///   every event committed before then: it answers a reader whose `since` is not
    ///   later.
    ///
    /// Readers wait for one another's reads here (at most [`SHARED_READ_WAIT`]): the one
    /// that would have read the same page anyway takes it from memory.
    pub async fn read_log_tail(
        &self,
        after: LogCursor,
        limit: u32,
        since: Option<Instant>,
    ) -> Result<LogPage, StoreError> {
        let Some(since) = since else {
            return Ok(self.read_log(after, limit).await?.into());
        };
        let Ok(mut tail) = tokio::time::timeout(SHARED_READ_WAIT, self.tail.lock()).await else {
            // The read in flight is slow (a long page, a database in trouble): each reader
            // reads on its own rather than queue behind it.
            return Ok(self.read_log(after, limit).await?.into());
        };
        if let Some(events) = tail
            .as_ref()
            .and_then(|page| page.answer(after, limit, since))
        {
            metrics::counter!("shopagent_log_pages_total", "from" => "memory").increment(1);
            return Ok(events);
        }
        let began = Instant::now();
        let events = LogPage::from(self.read_log(after, limit).await?);
        metrics::counter!("shopagent_log_pages_total", "from" => "database").increment(1);
        let page = TailPage {
            after,
            limit,
            events,
            began,
        };
        if tail.as_ref().is_some_and(|kept| !page.replaces(kept)) {
            return Ok(page.events);
        }
        let events = page.events.clone();
        *tail = Some(page);
        Ok(events)
    }

    /// [`Store::read_log`] of the events `filter` selects, selected by the database.
    pub async fn read_log_matching(
        &self,
        after: LogCursor,
        limit: u32,
        filter: &LogFilter,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events: Vec<StoredEvent> = match self.database() {
            Database::Postgres(pool) => {
                let (conditions, values) = filter.sql(Backend::Postgres, 4);
                let sql = format!(
                    "SELECT {LOG_COLUMNS}, txid::text::bigint AS txid_number FROM events
                      WHERE (txid, position) > ($1::bigint::text::xid8, $2)
                        AND txid < pg_snapshot_xmin(pg_current_snapshot()){conditions}
                      ORDER BY txid, position
                      LIMIT $3"
                );
                let query = sqlx::query(&sql)
                    .bind(after.txid)
                    .bind(after.position)
                    .bind(i64::from(limit));
                let rows = bind_filter!(query, &values).fetch_all(pool).await?;
                rows.iter().map(pg_stored_event).collect::<Result<_, _>>()?
            }
            Database::Sqlite(pool) => {
                let (conditions, values) = filter.sql(Backend::Sqlite, 3);
                let sql = format!(
                    "SELECT {LOG_COLUMNS} FROM events WHERE position > $1{conditions}
                      ORDER BY position LIMIT $2"
                );
                let query = sqlx::query(&sql)
                    .bind(after.position)
                    .bind(i64::from(limit));
                let rows = bind_filter!(query, &values).fetch_all(pool).await?;
                rows.iter()
                    .map(sqlite_stored_event)
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(events)
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

    /// How long the next event after `after` (in commit order) has waited since it was
    /// recorded: a reader's lag in time, at that reader's checkpoint. Zero when none
    /// waits.
    pub async fn waiting_for(&self, after: LogCursor) -> Result<Duration, StoreError> {
        let oldest = self.next_recorded_at(after).await?;
        Ok(oldest.map_or(Duration::ZERO, |oldest| {
            (OffsetDateTime::now_utc() - oldest)
                .try_into()
                .unwrap_or(Duration::ZERO)
        }))
    }

    /// When the next event after `after` (in commit order) was recorded.
    async fn next_recorded_at(
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
        self.count_between_matching(after, last, &LogFilter::default())
            .await
    }

    /// [`Store::count_between`] of the events `filter` selects.
    pub async fn count_between_matching(
        &self,
        after: LogCursor,
        last: i64,
        filter: &LogFilter,
    ) -> Result<i64, StoreError> {
        let count: i64 = match self.database() {
            Database::Postgres(pool) => {
                let (conditions, values) = filter.sql(Backend::Postgres, 4);
                let sql = format!(
                    "SELECT count(*) FROM events
                      WHERE (txid, position) > ($1::bigint::text::xid8, $2) AND position <= $3{conditions}"
                );
                let query = sqlx::query_scalar(&sql)
                    .bind(after.txid)
                    .bind(after.position)
                    .bind(last);
                bind_filter!(query, &values).fetch_one(pool).await?
            }
            Database::Sqlite(pool) => {
                let (conditions, values) = filter.sql(Backend::Sqlite, 3);
                let sql = format!(
                    "SELECT count(*) FROM events WHERE position > $1 AND position <= $2{conditions}"
                );
                let query = sqlx::query_scalar(&sql).bind(after.position).bind(last);
                bind_filter!(query, &values).fetch_one(pool).await?
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
    filter: Arc<LogFilter>,
    cursor: LogCursor,
    next: Option<tokio::task::JoinHandle<Result<Vec<StoredEvent>, StoreError>>>,
}

impl LogPages {
    pub fn new(store: Store, after: LogCursor, limit: u32) -> Self {
        Self::matching(store, after, limit, LogFilter::default())
    }

    /// Pages of the events `filter` selects.
    pub fn matching(store: Store, after: LogCursor, limit: u32, filter: LogFilter) -> Self {
        Self {
            store,
            limit,
            filter: Arc::new(filter),
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
            None => {
                self.store
                    .read_log_matching(self.cursor, self.limit, &self.filter)
                    .await?
            }
        };
        if let Some(last) = page.last() {
            self.cursor = last.cursor;
            let (store, cursor, limit) = (self.store.clone(), self.cursor, self.limit);
            let filter = Arc::clone(&self.filter);
            self.next = Some(tokio::spawn(async move {
                store.read_log_matching(cursor, limit, &filter).await
            }));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64) -> StoredEvent {
        StoredEvent {
            cursor: LogCursor { txid: 7, position },
            event_id: Uuid::now_v7(),
            aggregate_type: "tally".into(),
            aggregate_id: "t-1".into(),
            sequence: position,
            event_type: "TallyAdded".into(),
            event_version: "1".into(),
            payload: Value::Null,
            metadata: EventMetadata::new("tenant", "someone"),
            recorded_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn cursor(position: i64) -> LogCursor {
        LogCursor { txid: 7, position }
    }

    /// A page read after position 10 with `limit`, holding events 11..=`last`, read
    /// `ago` before now.
    fn page(limit: u32, last: i64, ago: Duration) -> (TailPage, Instant) {
        let now = Instant::now();
        let page = TailPage {
            after: cursor(10),
            limit,
            events: (11..=last).map(event).collect::<Vec<_>>().into(),
            began: now - ago,
        };
        (page, now)
    }

    fn positions(answer: Option<LogPage>) -> Option<Vec<i64>> {
        answer.map(|events| events.iter().map(StoredEvent::position).collect())
    }

    #[test]
    fn a_full_page_answers_a_cursor_within_it_whenever_it_was_read() {
        let (page, now) = page(4, 14, Duration::from_secs(60));
        assert_eq!(
            positions(page.answer(cursor(11), 2, now)),
            Some(vec![12, 13])
        );
    }

    #[test]
    fn a_full_page_does_not_answer_with_fewer_events_than_asked_for() {
        // Two events left of the page, four asked for: the database may hold more, and a
        // short answer would tell the reader it is at the head.
        let (page, now) = page(4, 14, Duration::ZERO);
        assert_eq!(positions(page.answer(cursor(12), 4, now)), None);
        assert_eq!(positions(page.answer(cursor(14), 4, now)), None);
    }

    #[test]
    fn a_page_that_reached_the_head_answers_a_reader_woken_before_its_read() {
        let (page, now) = page(64, 13, Duration::from_millis(5));
        let woken = now - Duration::from_millis(20);
        assert_eq!(
            positions(page.answer(cursor(11), 64, woken)),
            Some(vec![12, 13])
        );
        assert_eq!(positions(page.answer(cursor(13), 64, woken)), Some(vec![]));
    }

    #[test]
    fn a_page_that_reached_the_head_does_not_answer_a_reader_woken_after_its_read() {
        // The append that woke the reader may have been committed after this page's read
        // began: only the database holds it.
        let (page, now) = page(64, 13, Duration::from_millis(5));
        assert_eq!(positions(page.answer(cursor(13), 64, now)), None);
        assert_eq!(positions(page.answer(cursor(11), 64, now)), None);
    }

    #[test]
    fn a_page_read_behind_the_kept_one_does_not_take_its_place() {
        let (kept, _) = page(4, 14, Duration::ZERO);
        let behind = TailPage {
            after: cursor(2),
            limit: 4,
            events: (3..=6).map(event).collect::<Vec<_>>().into(),
            began: Instant::now(),
        };
        assert!(!behind.replaces(&kept));
        let (as_far, _) = page(64, 14, Duration::ZERO);
        assert!(as_far.replaces(&kept), "a later read to the same end");
        let (further, _) = page(64, 15, Duration::ZERO);
        assert!(further.replaces(&kept));
        let nothing_new = TailPage {
            after: cursor(14),
            limit: 64,
            events: Vec::new().into(),
            began: Instant::now(),
        };
        assert!(nothing_new.replaces(&kept), "read at the head, later");
    }

    #[test]
    fn a_page_does_not_answer_a_reader_behind_its_start() {
        let (page, now) = page(4, 14, Duration::ZERO);
        let woken = now - Duration::from_secs(1);
        assert_eq!(positions(page.answer(cursor(9), 1, woken)), None);
    }
}
