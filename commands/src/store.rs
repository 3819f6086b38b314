//! The event store: appends to the global log and loads aggregate streams.
//!
//! [`Store`] implements cqrs-es's [`PersistedEventRepository`] for both backends, so
//! cqrs-es's `PersistedEventStore` (upcasters, snapshots) runs on top of it. It is our
//! own implementation rather than postgres-es/sqlite-es; docs/adr/0001 says why.

use std::sync::Arc;

use cqrs_es::Aggregate as EsAggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayFeed, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use futures::TryStreamExt;
use serde_json::Value;
use shopagent_domain::EventMetadata;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::append_group::{AppendGroup, PgAppendRows, PgEventRow, PgOutcomeRow, pg_append};
use crate::database::{Backend, Database, KeptConnections};
use crate::log::format_timestamp;
use crate::request_claim::{ClaimInUse, RequestClaim};
use crate::version_group::VersionGroup;

/// Why a store operation failed, apart from the append-specific outcomes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or has no free connection: retry later.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("event store error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row cannot be read back: a bug or a hand-edited database.
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// This error, for one more of the requests that one statement failed (the error
    /// itself is not `Clone`): as unavailable, unless it says the pool's own state.
    pub(crate) fn again(&self) -> StoreError {
        let again = match self {
            Self::Unavailable(sqlx::Error::PoolTimedOut) => sqlx::Error::PoolTimedOut,
            Self::Unavailable(sqlx::Error::PoolClosed) => sqlx::Error::PoolClosed,
            Self::Unavailable(sqlx::Error::Io(io)) => {
                sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string()))
            }
            other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
        };
        StoreError::from(again)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            other => Self::Database(other),
        }
    }
}

/// Why an append did not happen. Nothing was stored in every case.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream first (optimistic concurrency).
    #[error("stream was changed concurrently")]
    Conflict,
    /// A command with the same tenant and idempotency key has already committed.
    #[error("a command with this idempotency key was already recorded")]
    DuplicateCommand,
    /// The append carried its request's claim on the request's key, and the key was
    /// held already (see [`crate::request_claim`]).
    #[error("the request's idempotency key is held already")]
    RequestKeyTaken,
    /// The events do not form one well-formed append (a caller bug).
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AppendError> for PersistenceError {
    fn from(error: AppendError) -> Self {
        match error {
            // A duplicate command is a lost race against the same command: the caller
            // retries, finds the recorded outcome and returns it.
            AppendError::Conflict | AppendError::DuplicateCommand => Self::OptimisticLockError,
            AppendError::Store(StoreError::Unavailable(e)) => Self::ConnectionError(Box::new(e)),
            other => Self::UnknownError(Box::new(other)),
        }
    }
}

impl From<StoreError> for PersistenceError {
    fn from(error: StoreError) -> Self {
        AppendError::Store(error).into()
    }
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Global positions of the appended events, ascending (each stream's in sequence
    /// order).
    pub positions: Vec<i64>,
    pub event_ids: Vec<Uuid>,
}

/// One stream's part of an append: a run of consecutive events with one metadata (one
/// command's), and the snapshot to store with them.
#[derive(Debug, Clone)]
pub struct StreamAppend<'a> {
    pub events: &'a [SerializedEvent],
    pub snapshot: Option<SnapshotUpdate>,
}

/// A snapshot to store with an append, as cqrs-es computes it.
#[derive(Debug, Clone)]
pub struct SnapshotUpdate {
    pub payload: Value,
    /// 1 for an aggregate's first snapshot; each later one increments it.
    pub current_snapshot: i64,
}

/// The result of a command with an idempotency key, recorded with its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    pub request_digest: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub first_sequence: i64,
    pub last_sequence: i64,
}

/// A stream's snapshot and the events after it (see `Store::snapshot_and_events`).
/// The first event wanted is found by a scalar subquery, not by the join with the
/// snapshot row: PostgreSQL then bounds the index scan by it in every plan. Joined
/// on `e.sequence > s.last_sequence`, a prepared statement's generic plan could scan
/// the whole stream and filter it after the join, so that a load cost as much as the
/// stream was long, snapshot or not.
const SNAPSHOT_AND_EVENTS: &str = "SELECT s.last_sequence, s.current_snapshot,
        CASE WHEN e.sequence IS NULL OR e.sequence = COALESCE(s.last_sequence, 0) + 1
             THEN s.payload END AS snapshot,
        e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
        e.payload, e.metadata
   FROM (SELECT 1 AS one) AS one
   LEFT JOIN snapshots s ON s.aggregate_type = $1 AND s.aggregate_id = $2
   LEFT JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = $2
         AND e.sequence > (SELECT COALESCE(MAX(last_sequence), 0) FROM snapshots
                            WHERE aggregate_type = $1 AND aggregate_id = $2)
  ORDER BY e.sequence";

/// A stream's last sequence: the last entry of the primary key under the stream, and
/// no other. (PostgreSQL reads several streams' at once: see [`crate::version_group`].)
const SQLITE_STREAM_VERSION: &str = "SELECT sequence FROM events
  WHERE aggregate_type = $1 AND aggregate_id = $2
  ORDER BY sequence DESC LIMIT 1";

/// The event store over one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    /// The same database, for writes the log can always make again: see [`Store::derived`].
    derived: Database,
    appended: Arc<watch::Sender<u64>>,
    /// SQLite has one writer; queueing appends here is fairer than its busy handler.
    sqlite_writer: Arc<Mutex<()>>,
    /// The last page of the log this process's readers read: see [`Store::read_log_tail`].
    pub(crate) tail: Arc<Mutex<Option<crate::log::TailPage>>>,
    /// PostgreSQL connections kept from one statement on a command's path to the next.
    kept: Arc<KeptConnections>,
    /// The PostgreSQL appends waiting to share a statement: see [`crate::append_group`].
    group: Arc<AppendGroup>,
    /// The PostgreSQL version reads waiting to share a statement: see
    /// [`crate::version_group`].
    versions: Arc<VersionGroup>,
}

/// One validated append: a run of consecutive events of one aggregate.
struct AppendBatch<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    events: &'a [SerializedEvent],
    event_ids: Vec<Uuid>,
    metadata: EventMetadata,
    recorded_at: OffsetDateTime,
}

impl<'a> AppendBatch<'a> {
    fn new(
        events: &'a [SerializedEvent],
        recorded_at: OffsetDateTime,
    ) -> Result<Self, AppendError> {
        let first = events
            .first()
            .ok_or_else(|| AppendError::Invalid("no events to append".to_owned()))?;
        for (offset, event) in events.iter().enumerate() {
            if event.aggregate_type != first.aggregate_type
                || event.aggregate_id != first.aggregate_id
            {
                return Err(AppendError::Invalid(
                    "an append covers exactly one aggregate".to_owned(),
                ));
            }
            if event.sequence != first.sequence + offset || event.sequence == 0 {
                return Err(AppendError::Invalid(
                    "event sequences must be consecutive and start at 1".to_owned(),
                ));
            }
            if event.metadata != first.metadata {
                return Err(AppendError::Invalid(
                    "events of one append share their metadata".to_owned(),
                ));
            }
        }
        let metadata: EventMetadata =
            serde_json::from_value(first.metadata.clone()).map_err(|error| {
                AppendError::Invalid(format!(
                    "event metadata must carry tenant, principal and correlation_id: {error}"
                ))
            })?;
        Ok(Self {
            aggregate_type: &first.aggregate_type,
            aggregate_id: &first.aggregate_id,
            events,
            event_ids: events.iter().map(|_| Uuid::now_v7()).collect(),
            metadata,
            recorded_at,
        })
    }

    fn first_sequence(&self) -> i64 {
        self.events[0].sequence as i64
    }

    fn last_sequence(&self) -> i64 {
        self.events[self.events.len() - 1].sequence as i64
    }

    fn idempotency_key(&self) -> Option<&str> {
        self.metadata
            .idempotency_key
            .as_ref()
            .map(|key| key.as_str())
    }

    fn request_digest(&self) -> &str {
        self.metadata.request_digest.as_deref().unwrap_or_default()
    }
}

const EVENT_COLUMNS: &str =
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata";

impl Store {
    pub fn new(db: Database) -> Self {
        let (appended, _) = watch::channel(0);
        Self {
            derived: db.for_derived_writes(),
            db,
            appended: Arc::new(appended),
            sqlite_writer: Arc::new(Mutex::new(())),
            tail: Arc::default(),
            kept: Arc::default(),
            group: Arc::default(),
            versions: Arc::default(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The database for writes derived from the log — read models and their
    /// checkpoints, subscribers' checkpoints, stored HTTP answers — whose commits need
    /// not wait for the disk. On PostgreSQL its sessions run with `synchronous_commit`
    /// off: a commit is visible at once, but a crash of the database server (not of
    /// this process) may roll back the last few hundred milliseconds of such commits.
    /// Each of them is made again from the log, or by the retry it answers: a read
    /// model and its checkpoint roll back together, a checkpoint only repeats events
    /// its subscriber handles idempotently, and a lost HTTP answer is given again from
    /// the command's own record. Appends never use it: they wait for the disk.
    pub fn derived(&self) -> &Database {
        &self.derived
    }

    /// Closes both pools, waiting for the connections in use to be returned.
    pub async fn close(&self) {
        self.kept.give_back();
        self.db.close().await;
        self.derived.close().await;
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Changes each time this process appends; subscribers wait on it between polls.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Appends `events` atomically, with the idempotency record their metadata names and
    /// an optional snapshot. Either all of it commits or nothing does.
    pub async fn append(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<SnapshotUpdate>,
    ) -> Result<AppendReceipt, AppendError> {
        self.append_all(&[StreamAppend { events, snapshot }]).await
    }

    /// Appends to several streams (or several commands' events to one) in one
    /// transaction: all of it commits, with every idempotency record and snapshot, or
    /// nothing does. A conflict on any stream fails the whole append.
    pub async fn append_all(
        &self,
        parts: &[StreamAppend<'_>],
    ) -> Result<AppendReceipt, AppendError> {
        let span = tracing::info_span!(
            "store append",
            otel.kind = "client",
            db.system.name = match self.backend() {
                Backend::Postgres => "postgresql",
                Backend::Sqlite => "sqlite",
            },
            events = parts.iter().map(|part| part.events.len()).sum::<usize>(),
            streams = parts.len(),
        );
        self.append_batches(parts).instrument(span).await
    }

    async fn append_batches(
        &self,
        parts: &[StreamAppend<'_>],
    ) -> Result<AppendReceipt, AppendError> {
        let recorded_at = OffsetDateTime::now_utc();
        let batches = parts
            .iter()
            .map(|part| AppendBatch::new(part.events, recorded_at))
            .collect::<Result<Vec<_>, _>>()?;
        if batches.is_empty() {
            return Err(AppendError::Invalid("no events to append".to_owned()));
        }
        let claim = crate::request_claim::for_append()?;
        let appended = self
            .append_with_claim(&batches, parts, claim.as_ref().map(ClaimInUse::claim))
            .await;
        if let Some(claim) = claim {
            claim.settle(&appended);
        }
        let positions = appended?;
        self.appended
            .send_modify(|count| *count = count.wrapping_add(1));
        metrics::counter!("shopagent_events_appended_total").increment(positions.len() as u64);
        Ok(AppendReceipt {
            positions,
            event_ids: batches
                .into_iter()
                .flat_map(|batch| batch.event_ids)
                .collect(),
        })
    }

    /// Stores `batches` (with their parts' snapshots) and `claim`, all or nothing.
    async fn append_with_claim(
        &self,
        batches: &[AppendBatch<'_>],
        parts: &[StreamAppend<'_>],
        claim: Option<&Arc<RequestClaim>>,
    ) -> Result<Vec<i64>, AppendError> {
        let snapshots = || {
            batches
                .iter()
                .zip(parts)
                .filter_map(|(batch, part)| Some((batch, part.snapshot.as_ref()?)))
        };
        match &self.db {
            Database::Postgres(pool) => {
                let rows = PgAppendRows::new(batches, claim);
                if snapshots().next().is_some() {
                    let mut tx = pool.begin().await.map_err(StoreError::from)?;
                    let positions = pg_append(&mut *tx, &[&rows]).await?;
                    for (batch, snapshot) in snapshots() {
                        pg_store_snapshot(&mut tx, batch, snapshot).await?;
                    }
                    tx.commit().await.map_err(StoreError::from)?;
                    Ok(positions)
                } else {
                    self.group.append(pool, &self.kept, rows).await
                }
            }
            Database::Sqlite(pool) => {
                let _writer = self.sqlite_writer.lock().await;
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(StoreError::from)?;
                if let Some(claim) = claim {
                    sqlite_claim(&mut tx, claim).await?;
                }
                let mut positions = Vec::new();
                for batch in batches {
                    positions.extend(sqlite_append(&mut tx, batch).await?);
                }
                for (batch, snapshot) in snapshots() {
                    sqlite_store_snapshot(&mut tx, batch, snapshot).await?;
                }
                tx.commit().await.map_err(StoreError::from)?;
                Ok(positions)
            }
        }
    }

    /// The recorded outcome of the command `tenant` sent with `idempotency_key`, if any.
    pub async fn recorded_outcome(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<RecordedOutcome>, StoreError> {
        const SQL: &str =
            "SELECT request_digest, aggregate_type, aggregate_id, first_sequence, last_sequence
             FROM command_outcomes WHERE tenant = $1 AND idempotency_key = $2";
        let outcome = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(SQL)
                .bind(tenant)
                .bind(idempotency_key)
                .fetch_optional(pool)
                .await?
                .map(RecordedOutcome::from_tuple),
            Database::Sqlite(pool) => sqlx::query_as(SQL)
                .bind(tenant)
                .bind(idempotency_key)
                .fetch_optional(pool)
                .await?
                .map(RecordedOutcome::from_tuple),
        };
        Ok(outcome)
    }

    /// A stream's last sequence (0: no events yet): one entry of the primary key read,
    /// no payload, so a state kept in memory can be checked against the log cheaply.
    pub(crate) async fn stream_version(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<i64, StoreError> {
        match &self.db {
            Database::Postgres(pool) => {
                self.versions
                    .read(pool, &self.kept, aggregate_type, aggregate_id)
                    .await
            }
            Database::Sqlite(pool) => {
                let version: Option<i64> = sqlx::query_scalar(SQLITE_STREAM_VERSION)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_optional(pool)
                    .await?;
                Ok(version.unwrap_or(0))
            }
        }
    }

    pub(crate) async fn select_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<SerializedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence"
        );
        match &self.db {
            Database::Postgres(pool) => {
                let rows = sqlx::query(&sql)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(after_sequence)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(pg_serialized_event).collect()
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(&sql)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(after_sequence)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(sqlite_serialized_event).collect()
            }
        }
    }

    /// Streams events of one aggregate type (or one aggregate) into a cqrs-es replay
    /// stream. A database error is delivered on the stream rather than dropped.
    fn replay(&self, aggregate_type: &str, aggregate_id: Option<&str>) -> ReplayStream {
        const CHANNEL_SIZE: usize = 256;
        let (mut feed, stream) = ReplayStream::new(CHANNEL_SIZE);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
              WHERE aggregate_type = $1 AND ($2 IS NULL OR aggregate_id = $2)
              ORDER BY position"
        );
        let aggregate_type = aggregate_type.to_owned();
        let aggregate_id = aggregate_id.map(str::to_owned);
        let db = self.db.clone();
        tokio::spawn(async move {
            match &db {
                Database::Postgres(pool) => {
                    let sql = sql.replace("$2 IS NULL", "$2::text IS NULL");
                    let rows = sqlx::query(&sql)
                        .bind(&aggregate_type)
                        .bind(&aggregate_id)
                        .fetch(pool);
                    feed_replay(rows, pg_serialized_event, &mut feed).await;
                }
                Database::Sqlite(pool) => {
                    let rows = sqlx::query(&sql)
                        .bind(&aggregate_type)
                        .bind(&aggregate_id)
                        .fetch(pool);
                    feed_replay(rows, sqlite_serialized_event, &mut feed).await;
                }
            }
        });
        stream
    }

    /// An aggregate's snapshot and the events after it, in one statement (one round
    /// trip): the snapshot's columns ride on the first event's row (or on the one row
    /// there is when no event follows it).
    pub(crate) async fn snapshot_and_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<(Option<SerializedSnapshot>, Vec<SerializedEvent>), StoreError> {
        fn split<R: Row>(
            rows: &[R],
            snapshot_payload: impl Fn(&R) -> Result<Option<Value>, StoreError>,
            event: fn(&R) -> Result<SerializedEvent, StoreError>,
            aggregate_id: &str,
        ) -> Result<(Option<SerializedSnapshot>, Vec<SerializedEvent>), StoreError>
        where
            for<'c> &'c str: sqlx::ColumnIndex<R>,
            for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            let mut snapshot = None;
            let mut events = Vec::with_capacity(rows.len());
            for row in rows {
                if let (Some(payload), Some(last), Some(current)) = (
                    snapshot_payload(row)?,
                    row.try_get::<Option<i64>, _>("last_sequence")?,
                    row.try_get::<Option<i64>, _>("current_snapshot")?,
                ) {
                    snapshot = Some(SerializedSnapshot {
                        aggregate_id: aggregate_id.to_owned(),
                        aggregate: payload,
                        current_sequence: last as usize,
                        current_snapshot: current as usize,
                    });
                }
                if row.try_get::<Option<i64>, _>("sequence")?.is_some() {
                    events.push(event(row)?);
                }
            }
            Ok((snapshot, events))
        }
        match &self.db {
            Database::Postgres(pool) => {
                let mut connection = self.kept.lend(pool).await?;
                let rows = sqlx::query(SNAPSHOT_AND_EVENTS)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_all(&mut *connection)
                    .await?;
                connection.keep();
                split(
                    &rows,
                    |row| Ok(row.try_get("snapshot")?),
                    pg_serialized_event,
                    aggregate_id,
                )
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(SNAPSHOT_AND_EVENTS)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_all(pool)
                    .await?;
                split(
                    &rows,
                    |row| {
                        row.try_get::<Option<String>, _>("snapshot")?
                            .map(|text| parse_json(&text))
                            .transpose()
                    },
                    sqlite_serialized_event,
                    aggregate_id,
                )
            }
        }
    }

    async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, StoreError> {
        const SQL: &str = "SELECT last_sequence, current_snapshot, payload FROM snapshots
              WHERE aggregate_type = $1 AND aggregate_id = $2";
        let row: Option<(i64, i64, Value)> = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_as(SQL)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Sqlite(pool) => {
                let row: Option<(i64, i64, String)> = sqlx::query_as(SQL)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_optional(pool)
                    .await?;
                row.map(|(last, current, payload)| {
                    Ok::<_, StoreError>((last, current, parse_json(&payload)?))
                })
                .transpose()?
            }
        };
        Ok(row.map(
            |(last_sequence, current_snapshot, payload)| SerializedSnapshot {
                aggregate_id: aggregate_id.to_owned(),
                aggregate: payload,
                current_sequence: last_sequence as usize,
                current_snapshot: current_snapshot as usize,
            },
        ))
    }
}

/// Pushes decoded rows into a replay stream until the rows end, the consumer goes away,
/// or an error occurs — which is pushed too, so the consumer never mistakes a failure
/// for the end of the stream.
async fn feed_replay<R>(
    mut rows: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    decode: fn(&R) -> Result<SerializedEvent, StoreError>,
    feed: &mut ReplayFeed,
) {
    loop {
        let event = match rows.try_next().await {
            Ok(Some(row)) => decode(&row),
            Ok(None) => return,
            Err(error) => Err(error.into()),
        };
        let failed = event.is_err();
        if feed
            .push(event.map_err(PersistenceError::from))
            .await
            .is_err()
            || failed
        {
            return;
        }
    }
}

impl RecordedOutcome {
    fn from_tuple(row: (String, String, String, i64, i64)) -> Self {
        let (request_digest, aggregate_type, aggregate_id, first_sequence, last_sequence) = row;
        Self {
            request_digest,
            aggregate_type,
            aggregate_id,
            first_sequence,
            last_sequence,
        }
    }
}

impl PgAppendRows {
    /// The rows of `batches`, and `claim`, as one PostgreSQL append writes them.
    fn new(batches: &[AppendBatch<'_>], claim: Option<&Arc<RequestClaim>>) -> Self {
        let events = batches
            .iter()
            .flat_map(|batch| {
                batch
                    .events
                    .iter()
                    .zip(&batch.event_ids)
                    .map(move |(event, event_id)| PgEventRow {
                        event_id: *event_id,
                        aggregate_type: batch.aggregate_type.to_owned(),
                        aggregate_id: batch.aggregate_id.to_owned(),
                        sequence: event.sequence as i64,
                        event_type: event.event_type.clone(),
                        event_version: event.event_version.clone(),
                        payload: event.payload.to_string(),
                        metadata: event.metadata.to_string(),
                        recorded_at: batch.recorded_at,
                    })
            })
            .collect();
        let outcomes = batches
            .iter()
            .filter_map(|batch| {
                Some(PgOutcomeRow {
                    tenant: batch.metadata.tenant.clone(),
                    idempotency_key: batch.idempotency_key()?.to_owned(),
                    request_digest: batch.request_digest().to_owned(),
                    aggregate_type: batch.aggregate_type.to_owned(),
                    aggregate_id: batch.aggregate_id.to_owned(),
                    first_sequence: batch.first_sequence(),
                    last_sequence: batch.last_sequence(),
                    recorded_at: batch.recorded_at,
                })
            })
            .collect();
        Self {
            events,
            outcomes,
            claim: claim.cloned(),
        }
    }
}

/// The first snapshot is inserted; each later one replaces its predecessor only if that
/// is still the stored one. Either way, zero rows affected means a concurrent writer won.
fn snapshot_sql(snapshot: &SnapshotUpdate) -> &'static str {
    if snapshot.current_snapshot == 1 {
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
    } else {
        "UPDATE snapshots SET last_sequence = $3, current_snapshot = $4, payload = $5
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $4 - 1"
    }
}

async fn pg_store_snapshot(
    tx: &mut sqlx::PgConnection,
    batch: &AppendBatch<'_>,
    snapshot: &SnapshotUpdate,
) -> Result<(), AppendError> {
    let stored = sqlx::query(snapshot_sql(snapshot))
        .bind(batch.aggregate_type)
        .bind(batch.aggregate_id)
        .bind(batch.last_sequence())
        .bind(snapshot.current_snapshot)
        .bind(&snapshot.payload)
        .execute(tx)
        .await
        .map_err(StoreError::from)?;
    // Zero rows: another writer moved the snapshot on. The transaction is dropped
    // uncommitted, so nothing of this append is stored.
    if stored.rows_affected() == 1 {
        Ok(())
    } else {
        Err(AppendError::Conflict)
    }
}

/// Writes a request's claim on its key, first in the append's transaction: a unique
/// violation here is the key held already.
async fn sqlite_claim(
    tx: &mut sqlx::SqliteConnection,
    claim: &RequestClaim,
) -> Result<(), AppendError> {
    sqlx::query(
        "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state,
                                       lease_until_ms, created_at_ms, request, request_body)
         VALUES ($1, $2, $3, 'in_flight', $4, $5, $6, $7)",
    )
    .bind(&claim.tenant)
    .bind(&claim.key)
    .bind(&claim.request_hash)
    .bind(claim.lease_until_ms)
    .bind(claim.created_at_ms)
    .bind(&claim.request)
    .bind(claim.request_body.as_ref())
    .execute(tx)
    .await
    .map_err(|error| {
        if is_sqlite_unique_violation(&error) {
            AppendError::RequestKeyTaken
        } else {
            AppendError::Store(error.into())
        }
    })?;
    Ok(())
}

async fn sqlite_append(
    tx: &mut sqlx::SqliteConnection,
    batch: &AppendBatch<'_>,
) -> Result<Vec<i64>, AppendError> {
    let recorded_at = format_timestamp(batch.recorded_at);
    // The outcome goes first so that a unique violation on it is told apart from one on
    // the events: SQLite reports both with the same code.
    if let Some(key) = batch.idempotency_key() {
        sqlx::query(
            "INSERT INTO command_outcomes (tenant, idempotency_key, request_digest, aggregate_type,
                                           aggregate_id, first_sequence, last_sequence, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&batch.metadata.tenant)
        .bind(key)
        .bind(batch.request_digest())
        .bind(batch.aggregate_type)
        .bind(batch.aggregate_id)
        .bind(batch.first_sequence())
        .bind(batch.last_sequence())
        .bind(&recorded_at)
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            if is_sqlite_unique_violation(&error) {
                AppendError::DuplicateCommand
            } else {
                AppendError::Store(error.into())
            }
        })?;
    }
    let mut positions = Vec::with_capacity(batch.events.len());
    for (event, event_id) in batch.events.iter().zip(&batch.event_ids) {
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING position",
        )
        .bind(event_id.to_string())
        .bind(batch.aggregate_type)
        .bind(batch.aggregate_id)
        .bind(event.sequence as i64)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(event.payload.to_string())
        .bind(event.metadata.to_string())
        .bind(&recorded_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| {
            if is_sqlite_unique_violation(&error) {
                AppendError::Conflict
            } else {
                AppendError::Store(error.into())
            }
        })?;
        positions.push(position);
    }
    Ok(positions)
}

async fn sqlite_store_snapshot(
    tx: &mut sqlx::SqliteConnection,
    batch: &AppendBatch<'_>,
    snapshot: &SnapshotUpdate,
) -> Result<(), AppendError> {
    let stored = sqlx::query(snapshot_sql(snapshot))
        .bind(batch.aggregate_type)
        .bind(batch.aggregate_id)
        .bind(batch.last_sequence())
        .bind(snapshot.current_snapshot)
        .bind(snapshot.payload.to_string())
        .execute(tx)
        .await
        .map_err(StoreError::from)?;
    if stored.rows_affected() == 1 {
        Ok(())
    } else {
        Err(AppendError::Conflict)
    }
}

/// SQLITE_CONSTRAINT_UNIQUE (2067) or SQLITE_CONSTRAINT_PRIMARYKEY (1555).
fn is_sqlite_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("2067" | "1555")))
}

pub(crate) fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(error.to_string()))
}

fn pg_serialized_event(row: &PgRow) -> Result<SerializedEvent, StoreError> {
    Ok(SerializedEvent {
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get::<i64, _>("sequence")? as usize,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
    })
}

fn sqlite_serialized_event(row: &SqliteRow) -> Result<SerializedEvent, StoreError> {
    Ok(SerializedEvent {
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get::<i64, _>("sequence")? as usize,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: parse_json(row.try_get("payload")?)?,
        metadata: parse_json(row.try_get("metadata")?)?,
    })
}

impl PersistedEventRepository for Store {
    async fn get_events<A: EsAggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.select_events(A::TYPE, aggregate_id, 0).await?)
    }

    async fn get_last_events<A: EsAggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self
            .select_events(A::TYPE, aggregate_id, last_sequence as i64)
            .await?)
    }

    async fn get_snapshot<A: EsAggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(self.snapshot(A::TYPE, aggregate_id).await?)
    }

    async fn persist<A: EsAggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if events.is_empty() {
            return Ok(());
        }
        let snapshot = snapshot_update.map(|(_, payload, current_snapshot)| SnapshotUpdate {
            payload,
            current_snapshot: current_snapshot as i64,
        });
        self.append(events, snapshot).await?;
        Ok(())
    }

    async fn stream_events<A: EsAggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(self.replay(A::TYPE, Some(aggregate_id)))
    }

    async fn stream_all_events<A: EsAggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Ok(self.replay(A::TYPE, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TestStore, explain_generic_plan};

    /// Rows read from `events` by every node of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan.
    fn events_rows_read(plan: &Value) -> f64 {
        let here = if plan["Relation Name"] == "events" {
            plan["Actual Rows"].as_f64().unwrap_or(0.0)
                * plan["Actual Loops"].as_f64().unwrap_or(1.0)
        } else {
            0.0
        };
        let below = plan["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(events_rows_read);
        here + below.sum::<f64>()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_reads_only_the_events_after_the_snapshot_whatever_the_plan() {
        let test = TestStore::postgres().await;
        let Database::Postgres(pool) = test.store.database() else {
            unreachable!("a PostgreSQL test store");
        };
        sqlx::raw_sql(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, recorded_at)
             SELECT gen_random_uuid(), 'tally', 'long', n, 'Added', '1', '{}', '{}', now()
               FROM generate_series(1, 500) AS n;
             INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
             VALUES ('tally', 'long', 490, 7, '{}');",
        )
        .execute(pool)
        .await
        .expect("a long stream with a snapshot");

        let (snapshot, events) = test
            .store
            .snapshot_and_events("tally", "long")
            .await
            .expect("load");
        assert_eq!(snapshot.map(|s| s.current_sequence), Some(490));
        assert_eq!(events.len(), 10);

        // A prepared statement's cached generic plan, which the server may choose after
        // a few runs of the statement, is no different.
        let plan =
            explain_generic_plan(pool, "text, text", SNAPSHOT_AND_EVENTS, "'tally', 'long'").await;
        assert_eq!(events_rows_read(&plan[0]["Plan"]), 10.0, "{plan:#}");

        test.cleanup().await;
    }

    /// Appends follow one another on a kept connection; one the database closed
    /// meanwhile (a restart) fails at most the append that finds it closed, and the
    /// next goes on on another. Quiet, the store keeps none.
    #[tokio::test]
    async fn a_kept_connection_the_database_closed_is_replaced_and_none_is_kept_when_quiet() {
        use crate::test_support::{append_amounts, backend_that_ran, terminate_backend};
        let test = TestStore::postgres().await;
        let Database::Postgres(pool) = test.store.database().clone() else {
            unreachable!("a PostgreSQL test store");
        };
        // On the test's own database: other tests append in theirs meanwhile.
        let url = test
            .config
            .database_url
            .as_deref()
            .expect("a PostgreSQL url");
        let admin = sqlx::PgPool::connect(url).await.expect("admin pool");
        let version = append_amounts(&test.store, "tally", "kept", 0, &[1]).await;
        let closed = backend_that_ran(&admin, "%WITH appended AS%").await;
        terminate_backend(&admin, closed).await;

        let mut events = crate::test_support::amounts_events("tally", "kept", version, &[2]);
        // Fails or not, depending on whether the store still kept the closed one.
        let version = match test.store.append(&events, None).await {
            Ok(_) => version + 1,
            Err(_) => version,
        };
        events = crate::test_support::amounts_events("tally", "kept", version, &[3]);
        test.store.append(&events, None).await.expect("appended");

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.num_idle() < pool.size() as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "the store kept a connection while quiet"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        admin.close().await;
        test.cleanup().await;
    }

    /// Planned while the table was empty, the version read still reads one entry of a
    /// long stream.
    #[tokio::test]
    async fn a_version_read_reads_one_entry_of_a_long_stream_whatever_the_plan() {
        let test = TestStore::postgres().await;
        let Database::Postgres(pool) = test.store.database() else {
            unreachable!("a PostgreSQL test store");
        };
        sqlx::raw_sql("ANALYZE events")
            .execute(pool)
            .await
            .expect("analyze the empty table");
        let amounts: Vec<i64> = (1..=500).collect();
        crate::test_support::append_amounts(&test.store, "tally", "long", 0, &amounts).await;
        assert_eq!(
            test.store
                .stream_version("tally", "long")
                .await
                .expect("read"),
            500
        );
        assert_eq!(
            test.store
                .stream_version("tally", "none")
                .await
                .expect("read"),
            0
        );

        let plan = explain_generic_plan(
            pool,
            "text[], text[]",
            crate::version_group::PG_STREAM_VERSIONS,
            "ARRAY['tally'], ARRAY['long']",
        )
        .await;
        assert_eq!(events_rows_read(&plan[0]["Plan"]), 1.0, "{plan:#}");
        test.cleanup().await;
    }

    /// Version reads made together share statements, and each is answered its own
    /// stream's version: a stream named twice, and one with no events, too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_reads_made_together_each_answer_their_own_stream() {
        let test = TestStore::postgres().await;
        crate::test_support::append_amounts(&test.store, "tally", "three", 0, &[1, 2, 3]).await;
        crate::test_support::append_amounts(&test.store, "tally", "one", 0, &[1]).await;
        let streams = ["three", "none", "one", "three", "one", "none"];
        for _ in 0..20 {
            let reads = streams
                .iter()
                .map(|stream| test.store.stream_version("tally", stream));
            let versions = futures::future::try_join_all(reads).await.expect("read");
            assert_eq!(versions, [3, 0, 1, 3, 1, 0]);
        }
        test.cleanup().await;
    }
}
