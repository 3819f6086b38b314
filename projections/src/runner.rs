//! Checkpointed subscribers of the global log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shopagent_commands::log::format_timestamp;
use shopagent_commands::on_pool;
use shopagent_commands::subscriber::{
    Kept, SavedCursor, Step, Throughput, Wake, checkpoint, drive,
};
use shopagent_commands::{Database, LogCursor, Store, StoreError, StoredEvent};
use sqlx::{Postgres, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why a batch was not applied. The batch's transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("read model write failed: {0}")]
    ReadModel(#[from] sqlx::Error),
    /// The projection cannot handle an event (for example an unknown event version).
    #[error("cannot project event {position}: {reason}")]
    Event { position: i64, reason: String },
}

impl ProjectionError {
    /// `event`'s payload is not one this projection can read.
    pub fn unreadable(event: &StoredEvent, error: &serde_json::Error) -> Self {
        Self::Event {
            position: event.position(),
            reason: error.to_string(),
        }
    }
}

/// The transaction a batch runs in: read-model writes go here, with the checkpoint.
///
/// Read models use SQL that both backends accept; [`on_read_model!`] runs one query
/// text on whichever connection the transaction holds.
#[derive(Debug)]
pub enum ReadModelTx<'c> {
    Postgres(Transaction<'c, Postgres>),
    Sqlite(Transaction<'c, Sqlite>),
}

/// Runs `$body` with `$conn` bound to the transaction's connection, whatever its backend.
/// The body is compiled once per backend, so it may use backend-specific types.
#[macro_export]
macro_rules! on_read_model {
    ($tx:expr, $conn:ident => $body:block) => {
        match $tx {
            $crate::ReadModelTx::Postgres(tx) => {
                let $conn: &mut sqlx::PgConnection = &mut *tx;
                $body
            }
            $crate::ReadModelTx::Sqlite(tx) => {
                let $conn: &mut sqlx::SqliteConnection = &mut *tx;
                $body
            }
        }
    };
}

impl ReadModelTx<'static> {
    pub(crate) async fn begin(db: &Database) -> Result<Self, sqlx::Error> {
        Ok(match db {
            Database::Postgres(pool) => Self::Postgres(pool.begin().await?),
            // IMMEDIATE takes the write lock up front: SQLite cannot upgrade a read
            // transaction to a write one while another writer is active.
            Database::Sqlite(pool) => Self::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// Begins a batch's transaction holding projection `name`'s checkpoint row, in the
    /// one round trip of `BEGIN` on PostgreSQL: the lock is sent with it, in one
    /// message, and its answer is not read (the batch's save checks the checkpoint).
    /// On SQLite the IMMEDIATE transaction already excludes every other writer.
    async fn begin_holding(db: &Database, name: &str) -> Result<Self, sqlx::Error> {
        Ok(match db {
            Database::Postgres(pool) => {
                // Simple-query text has no parameters: the name goes in as a literal.
                let name = name.replace('\'', "''");
                Self::Postgres(
                    pool.begin_with(format!(
                        "BEGIN; SELECT 1 FROM projection_checkpoints WHERE name = '{name}' \
                         FOR UPDATE"
                    ))
                    .await?,
                )
            }
            Database::Sqlite(_) => Self::begin(db).await?,
        })
    }
}

impl ReadModelTx<'_> {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
    }
}

/// A read model fed from the log.
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the key of its checkpoint. Renaming it rebuilds the read model.
    fn name(&self) -> &'static str;

    /// The tables of its read model, and only those: a rebuild builds new versions of
    /// them beside the live ones and swaps them in. `apply` and `reset` must name them
    /// unqualified (the rebuild points the names at the new versions).
    fn tables(&self) -> &'static [&'static str];

    /// Whether [`Projection::apply`] may change the read model for `event`. A batch of
    /// events it does not project moves the checkpoint without a transaction of its
    /// own (see [`SavedCursor`]), so a projection that names what it projects keeps up
    /// with a busy log of other events at little cost. Must be true for every event
    /// `apply` acts on; the default, true for all, is always right.
    fn projects(&self, _event: &StoredEvent) -> bool {
        true
    }

    /// Applies one event inside the batch's transaction. Events the projection does
    /// not care about are ignored. Must not call the outside world.
    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError>;

    /// Applies a batch of consecutive events, in order. The default applies them one by
    /// one; a projection may write a whole batch in fewer statements, with the same
    /// outcome.
    async fn apply_batch(
        &self,
        tx: &mut ReadModelTx<'_>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(tx, event).await?;
        }
        Ok(())
    }

    /// Deletes every row of the read model, before a rebuild from the start of the log.
    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError>;
}

/// Where a projection stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// Global position of the last event applied (0 before the first).
    pub checkpoint_position: i64,
    /// Highest position in the log.
    pub head_position: i64,
    /// Committed events not yet applied.
    pub lag_events: i64,
    /// How long the oldest of them has been waiting, in seconds (0 when none waits).
    pub lag_seconds: f64,
    pub events_applied: i64,
    pub updated_at: String,
    /// Events applied per second over its last few seconds of work; 0 when it has
    /// applied nothing for that long.
    pub events_per_second: f64,
    /// `running`; `paused` by ops; `failing` while a batch cannot be applied (retried
    /// with backoff; nothing is skipped); or `rebuilding` while a new version of the read
    /// model is built beside the live one.
    pub state: &'static str,
    /// Why the last batch failed, while it keeps failing.
    pub error: Option<String>,
    /// The event it failed on, when one event was the cause.
    pub failed_position: Option<i64>,
    /// The rebuild under way, if any.
    pub rebuild: Option<RebuildStatus>,
}

/// How far a rebuild has come.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RebuildStatus {
    /// Position the new version has reached.
    pub position: i64,
    pub events_per_second: f64,
}

/// A rate or heartbeat older than this is history: the work behind it stopped.
pub(crate) const STALE: Duration = Duration::from_secs(10);

/// Whether `at` (a stored timestamp) is within `STALE` of now.
pub(crate) fn recent(at: &str) -> bool {
    shopagent_commands::log::parse_timestamp(at)
        .is_ok_and(|at| (OffsetDateTime::now_utc() - at).unsigned_abs() <= STALE)
}

/// Feeds one projection from the log.
#[derive(Clone)]
pub struct ProjectionRunner {
    store: Store,
    projection: Arc<dyn Projection>,
    batch_size: u32,
    idle_poll: Duration,
    throughput: Arc<std::sync::Mutex<Throughput>>,
    /// The checkpoint as this runner last committed it. Only a hint: each batch locks
    /// the stored checkpoint and reads again if it moved.
    saved: SavedCursor,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &self.projection.name())
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl ProjectionRunner {
    pub const DEFAULT_BATCH_SIZE: u32 = 500;

    pub fn new(store: Store, projection: Arc<dyn Projection>) -> Self {
        Self {
            store,
            projection,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            // Appends by this process wake the runner at once; the poll catches appends
            // made by other processes on the same database.
            idle_poll: Duration::from_millis(250),
            throughput: Arc::default(),
            saved: SavedCursor::default(),
        }
    }

    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Applies batches until `shutdown` fires, on one instance at a time (the
    /// projection's lease). A batch in flight when `shutdown` fires is finished and
    /// checkpointed first. Errors are recorded for ops and retried with backoff; they
    /// never end the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.name();
        let lease = format!("projection.{name}");
        let failing = &std::sync::atomic::AtomicBool::new(false);
        let runner = &self;
        drive(&self.store, &lease, self.idle_poll, &shutdown, |wake: Wake| async move {
            if wake.leased_anew {
                runner.saved.forget();
            }
            match runner.step_since(Some(wake.since)).await {
                Ok(applied) => {
                    if failing.swap(false, std::sync::atomic::Ordering::Relaxed)
                        && let Err(unrecorded) = runner.record_failure(None).await
                    {
                        tracing::warn!(projection = name, %unrecorded, "projection recovery not recorded");
                    }
                    // A full batch: more may be waiting. A shorter one reached the head.
                    if applied >= runner.batch_size as usize {
                        Step::Busy
                    } else {
                        Step::Idle
                    }
                }
                Err(error) => {
                    failing.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(projection = name, %error, "projection batch failed");
                    if let Err(unrecorded) = runner.record_failure(Some(&error)).await {
                        tracing::warn!(projection = name, %unrecorded, "projection failure not recorded");
                    }
                    Step::Failed
                }
            }
        })
        .await;
    }

    /// Records why the projection cannot go on (and at which event), or clears it.
    pub async fn record_failure(
        &self,
        error: Option<&ProjectionError>,
    ) -> Result<(), ProjectionError> {
        const SQL: &str =
            "INSERT INTO projection_checkpoints (name, updated_at, last_error, failed_position)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                              failed_position = excluded.failed_position";
        let reason = error.map(ToString::to_string);
        let position = match error {
            Some(ProjectionError::Event { position, .. }) => Some(*position),
            _ => None,
        };
        let now = format_timestamp(OffsetDateTime::now_utc());
        on_pool!(self.store.derived(), pool => {
            sqlx::query(SQL)
                .bind(self.name())
                .bind(&now)
                .bind(&reason)
                .bind(position)
                .execute(pool)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Applies batches until no committed event is left. Returns how many were applied.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        let mut total = 0;
        loop {
            let applied = self.step().await?;
            if applied == 0 {
                return Ok(total);
            }
            total += applied as u64;
        }
    }

    /// Applies batches until every event committed before this call is applied (or the
    /// projection is paused). Unlike [`ProjectionRunner::catch_up`], an empty batch is not
    /// taken as the end: on PostgreSQL a committed event becomes readable a moment later.
    pub async fn catch_up_to_head(&self) -> Result<(), ProjectionError> {
        let head = self.store.head_position().await?;
        loop {
            if self.step().await? > 0 {
                continue;
            }
            let checkpoint = checkpoint(self.store.database(), self.name()).await?;
            if self.store.count_between(checkpoint, head).await? == 0
                || status(&self.store, self.name()).await?.state == "paused"
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Empties the read model and rewinds the checkpoint to the start of the log, in one
    /// transaction; the next batches rebuild it.
    pub async fn reset(&self) -> Result<(), ProjectionError> {
        self.saved.forget();
        let mut tx = ReadModelTx::begin(self.store.derived()).await?;
        self.projection.reset(&mut tx).await?;
        rewind_checkpoint(&mut tx, self.name()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies at most one batch. Returns how many events it applied.
    pub async fn step(&self) -> Result<usize, ProjectionError> {
        self.step_since(None).await
    }

    /// [`ProjectionRunner::step`]; `since`: when a runner following the head was woken
    /// (see [`shopagent_commands::Store::read_log_tail`]).
    async fn step_since(&self, since: Option<Instant>) -> Result<usize, ProjectionError> {
        loop {
            if let Some(applied) = self.try_step(since).await? {
                return Ok(applied);
            }
            // The checkpoint was not where this runner kept it (ops moved it, another
            // instance applied the batch, or the projection was paused): the batch was
            // rolled back, and the next try starts from the stored checkpoint.
            self.saved.forget();
        }
    }

    /// [`ProjectionRunner::step_since`], once: `None` when the batch found its
    /// checkpoint moved as it saved it, and rolled back.
    async fn try_step(&self, since: Option<Instant>) -> Result<Option<usize>, ProjectionError> {
        let name = self.name();
        let started = Instant::now();
        let (tx, events, began) = loop {
            let db = self.store.database();
            let (kept, is_kept) = self.saved.start(db, name).await?;
            let events = self
                .store
                .read_log_tail(kept.next(), self.batch_size, since)
                .await?;
            if events.is_empty() {
                // Nothing after the kept cursor; but ops may have rewound the
                // checkpoint meanwhile, and then there is work from there.
                if is_kept && SavedCursor::moved(db, name, kept.written).await?.is_some() {
                    continue;
                }
                // The time to write what was passed over.
                if let Some((cursor, unwritten)) = kept.unwritten_place() {
                    match self.lock_at(kept.written, is_kept).await? {
                        Locked::At(tx) => {
                            let saved =
                                self.save(tx, kept.written, cursor, unwritten, (started, 0));
                            return Ok(saved.await?.then_some(0));
                        }
                        Locked::Paused => return Ok(Some(0)),
                        Locked::Moved => continue,
                    }
                }
                self.saved.keep(kept);
                return Ok(Some(0));
            }
            let last = events[events.len() - 1].cursor;
            if !events.iter().any(|event| self.projection.projects(event))
                && let Some(ahead) = kept.pass_over(last, events.len(), started)
            {
                self.throughput().record(started, events.len());
                self.saved.keep(ahead);
                return Ok(Some(events.len()));
            }
            match self.lock_at(kept.written, is_kept).await? {
                Locked::At(tx) => break (tx, events, kept),
                Locked::Paused => return Ok(Some(0)),
                Locked::Moved => {}
            }
        };
        let last = events[events.len() - 1].cursor;
        let span = tracing::info_span!(
            "projection batch",
            otel.name = %format_args!("{name} batch"),
            projection = name,
            events = events.len(),
            first_position = events[0].position(),
            last_position = last.position,
        );
        shopagent_commands::trace::join_batch(&span, &events);
        let saved = self
            .apply_and_save(tx, &events, began, started)
            .instrument(span)
            .await?;
        if !saved {
            return Ok(None);
        }
        tracing::debug!(
            projection = name,
            events = events.len(),
            position = last.position,
            "projection batch applied"
        );
        Ok(Some(events.len()))
    }
}

/// What a batch found when it locked the projection's checkpoint row.
enum Locked {
    /// The checkpoint is where the runner wrote it, or is taken to be (the save
    /// checks it): the batch goes on in this transaction.
    At(ReadModelTx<'static>),
    /// Ops paused the projection: nothing is applied (the transaction rolls back on
    /// drop).
    Paused,
    /// Another instance, or ops, moved the checkpoint: read again from the stored one.
    Moved,
}

impl ProjectionRunner {
    /// Begins a batch's transaction and locks the checkpoint row, expecting it at
    /// `written`. Another instance may have applied the batch meanwhile: the row lock
    /// serialises runners, and a moved checkpoint means read again.
    ///
    /// Where `written` is the checkpoint this runner kept from its last batch, the lock
    /// goes with `BEGIN` and nothing is read back: almost always it is still there, and
    /// the batch's save moves it only from there (and not while paused), so a batch
    /// that finds it moved is rolled back then. Otherwise (the first batch, or after a
    /// batch found its checkpoint moved) the row is read under the lock first.
    async fn lock_at(&self, written: LogCursor, kept: bool) -> Result<Locked, ProjectionError> {
        if kept && written != LogCursor::START {
            let tx = ReadModelTx::begin_holding(self.store.derived(), self.name()).await?;
            return Ok(Locked::At(tx));
        }
        let mut tx = ReadModelTx::begin(self.store.derived()).await?;
        let (locked, paused) = lock_checkpoint(&mut tx, self.name()).await?;
        Ok(if paused {
            Locked::Paused
        } else if locked == written {
            Locked::At(tx)
        } else {
            Locked::Moved
        })
    }

    /// Applies a batch read after the checkpoint `kept` locked in `tx` (and the events
    /// passed over before it), moves the checkpoint past it and commits. False when
    /// the checkpoint was no longer where it was kept: nothing is committed.
    async fn apply_and_save(
        &self,
        mut tx: ReadModelTx<'_>,
        events: &[StoredEvent],
        kept: Kept,
        started: Instant,
    ) -> Result<bool, ProjectionError> {
        self.projection.apply_batch(&mut tx, events).await?;
        let last = events[events.len() - 1].cursor;
        let applied = kept.unwritten() + events.len();
        let batch = (started, events.len());
        self.save(tx, kept.written, last, applied, batch).await
    }

    /// The projection's recent rate of events applied.
    fn throughput(&self) -> std::sync::MutexGuard<'_, Throughput> {
        self.throughput
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the checkpoint locked in `tx` from `from` to `cursor`, past `events` more
    /// events, and commits; the batch's own events, `(started, events)`, count in the
    /// rate once committed. False when it was not at `from`, or ops paused the
    /// projection: then nothing is committed (the transaction rolls back on drop).
    async fn save(
        &self,
        mut tx: ReadModelTx<'_>,
        from: LogCursor,
        cursor: LogCursor,
        events: usize,
        (started, batch_events): (Instant, usize),
    ) -> Result<bool, ProjectionError> {
        const SQL: &str = "UPDATE projection_checkpoints
              SET txid = $2, position = $3, events_applied = events_applied + $4,
                  updated_at = $5, events_per_second = $6
            WHERE name = $1 AND txid = $7 AND position = $8 AND paused = 0";
        let now = format_timestamp(OffsetDateTime::now_utc());
        let rate = self.throughput().rate_with(started, batch_events);
        let moved = on_read_model!(&mut tx, conn => {
            sqlx::query(SQL)
                .bind(self.name())
                .bind(cursor.txid)
                .bind(cursor.position)
                .bind(events as i64)
                .bind(&now)
                .bind(rate)
                .bind(from.txid)
                .bind(from.position)
                .execute(conn)
                .await?
                .rows_affected()
        });
        if moved == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        self.throughput().record(started, batch_events);
        self.saved.keep_written(cursor);
        Ok(true)
    }
}

/// Locks the projection's checkpoint row for the batch; returns the checkpoint and
/// whether ops paused the projection. The first batch ever makes the row; every later
/// one only locks it, in one statement.
pub(crate) async fn lock_checkpoint(
    tx: &mut ReadModelTx<'_>,
    name: &str,
) -> Result<(LogCursor, bool), ProjectionError> {
    const INSERT: &str = "INSERT INTO projection_checkpoints (name, updated_at) VALUES ($1, $2)
         ON CONFLICT (name) DO NOTHING";
    let select = match tx {
        ReadModelTx::Postgres(_) => {
            "SELECT txid, position, paused FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
        }
        // The IMMEDIATE transaction already excludes every other writer.
        ReadModelTx::Sqlite(_) => {
            "SELECT txid, position, paused FROM projection_checkpoints WHERE name = $1"
        }
    };
    let (txid, position, paused): (i64, i64, i32);
    on_read_model!(tx, conn => {
        let found = sqlx::query_as(select).bind(name).fetch_optional(&mut *conn).await?;
        (txid, position, paused) = match found {
            Some(row) => row,
            None => {
                sqlx::query(INSERT)
                    .bind(name)
                    .bind(format_timestamp(OffsetDateTime::now_utc()))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query_as(select).bind(name).fetch_one(&mut *conn).await?
            }
        };
    });
    Ok((LogCursor { txid, position }, paused != 0))
}

/// Rewinds the checkpoint to the start of the log, with its count of applied events
/// and its rate (a reset); makes the row if there is none.
async fn rewind_checkpoint(tx: &mut ReadModelTx<'_>, name: &str) -> Result<(), ProjectionError> {
    const SQL: &str = "INSERT INTO projection_checkpoints (name, updated_at) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET
            txid = 0, position = 0, events_applied = 0, updated_at = excluded.updated_at,
            events_per_second = 0";
    let now = format_timestamp(OffsetDateTime::now_utc());
    on_read_model!(tx, conn => {
        sqlx::query(SQL).bind(name).bind(&now).execute(conn).await?;
    });
    Ok(())
}

/// The status of projection `name`, whether or not a runner is active.
/// Pauses (`true`) or resumes (`false`) the projection `name` on every instance: its
/// runners stop applying at their next batch and pick up where they stopped.
pub async fn set_paused(store: &Store, name: &str, paused: bool) -> Result<(), ProjectionError> {
    const SQL: &str =
        "INSERT INTO projection_checkpoints (name, updated_at, paused) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused";
    let now = format_timestamp(OffsetDateTime::now_utc());
    let flag = i32::from(paused);
    on_pool!(store.database(), pool => {
        sqlx::query(SQL)
            .bind(name)
            .bind(&now)
            .bind(flag)
            .execute(pool)
            .await
            .map(drop)
    })?;
    Ok(())
}

pub async fn status(store: &Store, name: &str) -> Result<ProjectionStatus, ProjectionError> {
    const SQL: &str =
        "SELECT txid, position, events_applied, updated_at, last_error, failed_position,
                paused, events_per_second, rebuild_position, rebuild_events_per_second,
                rebuild_heartbeat
           FROM projection_checkpoints WHERE name = $1";
    let row: Option<StatusRow> = on_pool!(store.database(), pool => sqlx::query_as(SQL).bind(name).fetch_optional(pool).await)?;
    let row = row.unwrap_or_default();
    let cursor = LogCursor {
        txid: row.txid,
        position: row.position,
    };
    let rebuild = match (row.rebuild_position, &row.rebuild_heartbeat) {
        (Some(position), Some(heartbeat)) if recent(heartbeat) => Some(RebuildStatus {
            position,
            events_per_second: row.rebuild_events_per_second.unwrap_or(0.0),
        }),
        _ => None,
    };
    Ok(ProjectionStatus {
        name: name.to_owned(),
        checkpoint_position: row.position,
        head_position: store.head_position().await?,
        lag_events: store.count_after(cursor).await?,
        lag_seconds: store.waiting_for(cursor).await?.as_secs_f64(),
        events_applied: row.events_applied,
        events_per_second: if recent(&row.updated_at) {
            row.events_per_second
        } else {
            0.0
        },
        state: match (row.paused != 0, row.last_error.is_some(), rebuild.is_some()) {
            (true, _, _) => "paused",
            (false, true, _) => "failing",
            (false, false, true) => "rebuilding",
            (false, false, false) => "running",
        },
        updated_at: row.updated_at,
        error: row.last_error,
        failed_position: row.failed_position,
        rebuild,
    })
}

#[derive(Debug, Default, sqlx::FromRow)]
struct StatusRow {
    txid: i64,
    position: i64,
    events_applied: i64,
    updated_at: String,
    last_error: Option<String>,
    failed_position: Option<i64>,
    paused: i32,
    events_per_second: f64,
    rebuild_position: Option<i64>,
    rebuild_events_per_second: Option<f64>,
    rebuild_heartbeat: Option<String>,
}
