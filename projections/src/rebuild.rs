//! Zero-downtime rebuild: a new version of a read model is built beside the live one
//! from the start of the log, caught up to the head, and swapped in atomically.
//!
//! Throughout, the live read model keeps answering queries and its runner keeps
//! applying new events. The rebuild works on a connection of its own:
//!
//! - PostgreSQL: the new version's tables live in a schema of their own
//!   (`shopagent_rebuild_<name>`), created like the live ones with the same constraint
//!   and index names, and the connection's `search_path` puts that schema first, so the
//!   projection's unqualified SQL writes there. The switch drops the live tables and
//!   moves the new ones into the live schema in one transaction; a query waiting on the
//!   dropped table resolves the name again and reads the new one.
//! - SQLite: the new version is built in `TEMP` tables of the same names, which shadow
//!   the live ones on that connection only. The switch replaces the live tables' rows
//!   with the new ones in one write transaction; readers see one version or the other.
//!
//! The switch takes the live checkpoint's row lock, applies the events appended since
//! the rebuild's last batch, swaps, and moves the live checkpoint to where the new
//! version stands, so the live runner continues from there. A projection does nothing
//! outside its transaction, so a rebuild has no outside side effects; process managers
//! are not projections and are never rebuilt.
//!
//! One rebuild of a projection runs at a time: it claims the projection's rebuild
//! columns and renews the claim with each batch; a claim not renewed for a while (the
//! rebuilding process died) may be taken over. Leftover side tables are dropped first.

use std::sync::Arc;
use std::time::Instant;

use shopagent_commands::log::LogPages;
use shopagent_commands::log::format_timestamp;
use shopagent_commands::subscriber::Throughput;
use shopagent_commands::{Database, LogCursor, Store};
use sqlx::{Connection, PgConnection, SqliteConnection};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::runner::{Projection, ProjectionError, ReadModelTx, recent};

/// Why a rebuild stopped. The live read model is as it was.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(String),
    #[error("the rebuild was cancelled")]
    Cancelled,
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl From<sqlx::Error> for RebuildError {
    fn from(error: sqlx::Error) -> Self {
        Self::Projection(error.into())
    }
}

impl From<shopagent_commands::StoreError> for RebuildError {
    fn from(error: shopagent_commands::StoreError) -> Self {
        Self::Projection(error.into())
    }
}

/// How far a rebuild has come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildProgress {
    /// Position of the last event the new version applied.
    pub position: i64,
    /// The log's head when this was measured.
    pub head: i64,
    /// Events applied so far.
    pub applied: u64,
    pub events_per_second: f64,
}

/// Rebuilds one projection's read model beside the live one.
pub struct Rebuild {
    store: Store,
    projection: Arc<dyn Projection>,
    batch_size: u32,
}

impl std::fmt::Debug for Rebuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuild")
            .field("projection", &self.projection.name())
            .finish_non_exhaustive()
    }
}

/// The connection the new version is built on, detached from the pool: its session
/// state (search path, temp tables) must never reach another query.
enum Builder {
    Postgres {
        connection: PgConnection,
        live_schema: String,
        side_schema: String,
    },
    Sqlite(SqliteConnection),
}

impl Rebuild {
    pub const DEFAULT_BATCH_SIZE: u32 = 2_000;

    pub fn new(store: Store, projection: Arc<dyn Projection>) -> Self {
        Self {
            store,
            projection,
            batch_size: Self::DEFAULT_BATCH_SIZE,
        }
    }

    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Claims the rebuild, builds the new version, switches readers to it and drops
    /// the old one. Calls `progress` after each batch. On `shutdown`, or any error, the
    /// new version is dropped and the live one stays.
    pub async fn run(
        &self,
        shutdown: &CancellationToken,
        progress: impl FnMut(RebuildProgress),
    ) -> Result<RebuildProgress, RebuildError> {
        self.claim().await?;
        self.run_claimed(shutdown, progress).await
    }

    /// [`Rebuild::run`] after a successful [`Rebuild::claim`]: the claim is released
    /// at the end, whatever the outcome.
    pub async fn run_claimed(
        &self,
        shutdown: &CancellationToken,
        mut progress: impl FnMut(RebuildProgress),
    ) -> Result<RebuildProgress, RebuildError> {
        let name = self.projection.name();
        let outcome = async {
            let mut builder = self.prepare().await?;
            let built = self.build(&mut builder, shutdown, &mut progress).await;
            let switched = match built {
                Ok((cursor, applied)) => self.switch(&mut builder, cursor, applied).await,
                Err(error) => Err(error),
            };
            if switched.is_err() {
                builder.discard().await;
            }
            switched
        }
        .await;
        if let Err(unreleased) = self.release().await {
            tracing::warn!(projection = name, %unreleased, "rebuild claim not released");
        }
        match &outcome {
            Ok(done) => {
                tracing::info!(
                    projection = name,
                    events = done.applied,
                    "rebuilt and switched"
                )
            }
            Err(error) => tracing::warn!(projection = name, %error, "rebuild abandoned"),
        }
        outcome
    }

    /// Claims the projection's rebuild, unless a live claim holds it: status shows it
    /// `rebuilding` from now on.
    pub async fn claim(&self) -> Result<(), RebuildError> {
        let name = self.projection.name();
        let mut tx = ReadModelTx::begin(self.store.database()).await?;
        crate::runner::lock_checkpoint(&mut tx, name).await?;
        const SQL: &str = "SELECT rebuild_heartbeat FROM projection_checkpoints WHERE name = $1";
        let heartbeat: Option<String> = crate::on_read_model!(&mut tx, conn => {
            sqlx::query_scalar(SQL).bind(name).fetch_one(conn).await?
        });
        if heartbeat.as_deref().is_some_and(recent) {
            return Err(RebuildError::AlreadyRunning(name.to_owned()));
        }
        self.heartbeat_in(&mut tx, 0, 0.0).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat_in(
        &self,
        tx: &mut ReadModelTx<'_>,
        position: i64,
        rate: f64,
    ) -> Result<(), RebuildError> {
        const SQL: &str = "UPDATE projection_checkpoints
              SET rebuild_position = $2, rebuild_events_per_second = $3, rebuild_heartbeat = $4
            WHERE name = $1";
        let now = format_timestamp(OffsetDateTime::now_utc());
        crate::on_read_model!(tx, conn => {
            sqlx::query(SQL)
                .bind(self.projection.name())
                .bind(position)
                .bind(rate)
                .bind(&now)
                .execute(conn)
                .await?;
        });
        Ok(())
    }

    async fn release(&self) -> Result<(), sqlx::Error> {
        const SQL: &str = "UPDATE projection_checkpoints
              SET rebuild_position = NULL, rebuild_events_per_second = NULL, rebuild_heartbeat = NULL
            WHERE name = $1";
        let name = self.projection.name();
        shopagent_commands::on_pool!(self.store.database(), pool => {
            sqlx::query(SQL).bind(name).execute(pool).await.map(drop)
        })
    }

    /// Opens the builder's connection and creates empty new versions of the tables.
    async fn prepare(&self) -> Result<Builder, RebuildError> {
        let tables = self.projection.tables();
        match self.store.database() {
            Database::Postgres(pool) => {
                let mut connection = pool.acquire().await?.detach();
                let live_schema: String = sqlx::query_scalar("SELECT current_schema()")
                    .fetch_one(&mut connection)
                    .await?;
                let side_schema = format!("shopagent_rebuild_{}", self.projection.name());
                let live = quoted(&live_schema);
                let side = quoted(&side_schema);
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {side} CASCADE"))
                    .execute(&mut connection)
                    .await?;
                sqlx::query(&format!("CREATE SCHEMA {side}"))
                    .execute(&mut connection)
                    .await?;
                for table in tables {
                    let t = quoted(table);
                    sqlx::query(&format!(
                        "CREATE TABLE {side}.{t} (LIKE {live}.{t} INCLUDING ALL EXCLUDING INDEXES)"
                    ))
                    .execute(&mut connection)
                    .await?;
                    // Primary keys and unique constraints, then plain indexes, under their
                    // live names: they keep them after the switch.
                    let constraints: Vec<(String, String)> = sqlx::query_as(
                        "SELECT c.conname, pg_get_constraintdef(c.oid)
                           FROM pg_constraint c
                           JOIN pg_class r ON r.oid = c.conrelid
                           JOIN pg_namespace n ON n.oid = r.relnamespace
                          WHERE n.nspname = $1 AND r.relname = $2 AND c.contype IN ('p', 'u')",
                    )
                    .bind(&live_schema)
                    .bind(table)
                    .fetch_all(&mut connection)
                    .await?;
                    for (constraint, definition) in &constraints {
                        sqlx::query(&format!(
                            "ALTER TABLE {side}.{t} ADD CONSTRAINT {} {definition}",
                            quoted(constraint)
                        ))
                        .execute(&mut connection)
                        .await?;
                    }
                    let indexes: Vec<(String, String)> = sqlx::query_as(
                        "SELECT indexname, indexdef FROM pg_indexes
                          WHERE schemaname = $1 AND tablename = $2",
                    )
                    .bind(&live_schema)
                    .bind(table)
                    .fetch_all(&mut connection)
                    .await?;
                    for (index, definition) in indexes {
                        if constraints.iter().any(|(c, _)| *c == index) {
                            continue;
                        }
                        let on_live = format!(" ON {live_schema}.{table} ");
                        let on_live_quoted = format!(" ON {live}.{t} ");
                        let definition = definition
                            .replacen(&on_live, &format!(" ON {side}.{t} "), 1)
                            .replacen(&on_live_quoted, &format!(" ON {side}.{t} "), 1);
                        sqlx::query(&definition).execute(&mut connection).await?;
                    }
                }
                sqlx::query(&format!("SET search_path TO {side}, {live}"))
                    .execute(&mut connection)
                    .await?;
                Ok(Builder::Postgres {
                    connection,
                    live_schema,
                    side_schema,
                })
            }
            Database::Sqlite(pool) => {
                let mut connection = pool.acquire().await?.detach();
                for table in tables {
                    let t = quoted(table);
                    sqlx::query(&format!("DROP TABLE IF EXISTS temp.{t}"))
                        .execute(&mut connection)
                        .await?;
                    let definitions: Vec<(String, String)> = sqlx::query_as(
                        "SELECT type, sql FROM main.sqlite_master
                          WHERE tbl_name = $1 AND sql IS NOT NULL
                          ORDER BY type = 'index'",
                    )
                    .bind(table)
                    .fetch_all(&mut connection)
                    .await?;
                    for (kind, definition) in definitions {
                        let temporary = match kind.as_str() {
                            "table" => {
                                definition.replacen("CREATE TABLE ", "CREATE TEMP TABLE ", 1)
                            }
                            "index" => definition
                                .replacen("CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX temp.", 1)
                                .replacen("CREATE INDEX ", "CREATE INDEX temp.", 1),
                            _ => continue,
                        };
                        sqlx::query(&temporary).execute(&mut connection).await?;
                    }
                }
                Ok(Builder::Sqlite(connection))
            }
        }
    }

    /// Applies the log to the new version in batches until it reaches the head.
    async fn build(
        &self,
        builder: &mut Builder,
        shutdown: &CancellationToken,
        progress: &mut impl FnMut(RebuildProgress),
    ) -> Result<(LogCursor, u64), RebuildError> {
        let mut cursor = LogCursor::START;
        let mut applied = 0_u64;
        let mut throughput = Throughput::default();
        let mut pages = LogPages::new(self.store.clone(), cursor, self.batch_size);
        // Every event committed before the rebuild began must be in the new version
        // before the switch. An empty page alone does not say so: on PostgreSQL a
        // committed event becomes readable only once older transactions end.
        let target = self.store.head_position().await?;
        loop {
            if shutdown.is_cancelled() {
                return Err(RebuildError::Cancelled);
            }
            let started = Instant::now();
            let events = pages.next_page().await?;
            let Some(last) = events.last().map(|e| e.cursor) else {
                if self.store.count_between(cursor, target).await? == 0 {
                    return Ok((cursor, applied));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let rate = throughput.record(started, events.len());
            let mut tx = builder.begin().await?;
            self.projection.apply_batch(&mut tx, &events).await?;
            // The claim is renewed with each batch; the checkpoint table is the live
            // one (it has no new version), whatever the search path.
            self.heartbeat_in(&mut tx, last.position, rate).await?;
            tx.commit().await?;
            cursor = last;
            applied += events.len() as u64;
            progress(RebuildProgress {
                position: last.position,
                head: self.store.head_position().await?,
                applied,
                events_per_second: rate,
            });
        }
    }

    /// In one transaction: holds the live checkpoint, applies what was appended since
    /// the last batch, swaps the tables and moves the live checkpoint.
    async fn switch(
        &self,
        builder: &mut Builder,
        mut cursor: LogCursor,
        mut applied: u64,
    ) -> Result<RebuildProgress, RebuildError> {
        let name = self.projection.name();
        let tables = self.projection.tables();
        let swap = builder.swap_statements(tables);
        let mut tx = builder.begin().await?;
        let (live, _) = crate::runner::lock_checkpoint(&mut tx, name).await?;
        loop {
            let events = self.store.read_log(cursor, self.batch_size).await?;
            let Some(last) = events.last().map(|e| e.cursor) else {
                break;
            };
            self.projection.apply_batch(&mut tx, &events).await?;
            cursor = last;
            applied += events.len() as u64;
        }
        // The live version never moves back: the new one must hold at least what it does.
        if (cursor.txid, cursor.position) < (live.txid, live.position) {
            return Err(ProjectionError::Event {
                position: live.position,
                reason: "the rebuilt version is behind the live one; not switched".into(),
            }
            .into());
        }
        crate::on_read_model!(&mut tx, conn => {
            for statement in &swap {
                sqlx::query(statement).execute(&mut *conn).await?;
            }
            sqlx::query(
                "UPDATE projection_checkpoints
                    SET txid = $2, position = $3, events_applied = $4, updated_at = $5,
                        last_error = NULL, failed_position = NULL
                  WHERE name = $1",
            )
            .bind(name)
            .bind(cursor.txid)
            .bind(cursor.position)
            .bind(i64::try_from(applied).unwrap_or(i64::MAX))
            .bind(format_timestamp(OffsetDateTime::now_utc()))
            .execute(&mut *conn)
            .await?;
        });
        tx.commit().await?;
        Ok(RebuildProgress {
            position: cursor.position,
            head: cursor.position,
            applied,
            events_per_second: 0.0,
        })
    }
}

impl Builder {
    async fn begin(&mut self) -> Result<ReadModelTx<'_>, sqlx::Error> {
        Ok(match self {
            Self::Postgres { connection, .. } => ReadModelTx::Postgres(connection.begin().await?),
            Self::Sqlite(connection) => {
                ReadModelTx::Sqlite(connection.begin_with("BEGIN IMMEDIATE").await?)
            }
        })
    }

    /// What replaces the live tables with the new versions.
    fn swap_statements(&self, tables: &[&str]) -> Vec<String> {
        match self {
            Self::Postgres {
                live_schema,
                side_schema,
                ..
            } => {
                let (live, side) = (quoted(live_schema), quoted(side_schema));
                let mut statements: Vec<String> = tables
                    .iter()
                    .flat_map(|table| {
                        let t = quoted(table);
                        [
                            format!("DROP TABLE {live}.{t}"),
                            format!("ALTER TABLE {side}.{t} SET SCHEMA {live}"),
                        ]
                    })
                    .collect();
                statements.push(format!("DROP SCHEMA {side}"));
                statements
            }
            Self::Sqlite(_) => tables
                .iter()
                .flat_map(|table| {
                    let t = quoted(table);
                    [
                        format!("DELETE FROM main.{t}"),
                        format!("INSERT INTO main.{t} SELECT * FROM temp.{t}"),
                        format!("DROP TABLE temp.{t}"),
                    ]
                })
                .collect(),
        }
    }

    /// Drops the new version after a failure (SQLite's temp tables go with the
    /// connection).
    async fn discard(self) {
        if let Self::Postgres {
            mut connection,
            side_schema,
            ..
        } = self
        {
            let dropped = sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quoted(&side_schema)
            ))
            .execute(&mut connection)
            .await;
            if let Err(error) = dropped {
                tracing::warn!(%error, schema = side_schema, "rebuild tables left behind; the next rebuild drops them");
            }
        }
    }
}

/// A SQL identifier, quoted.
fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}
