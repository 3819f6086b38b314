//! Opening the configured database and applying migrations.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");

/// File name of the embedded store inside the data directory.
pub const SQLITE_FILE_NAME: &str = "shopagent.db";

/// Where the event store lives.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` selects PostgreSQL; `None` selects the embedded SQLite store.
    pub database_url: Option<String>,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails.
    pub acquire_timeout: Duration,
}

impl StoreConfig {
    pub fn new(database_url: Option<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            database_url: database_url.filter(|url| !url.trim().is_empty()),
            data_dir: data_dir.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// Why the store could not be opened. Each message is one line fit for an operator and
/// never contains a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "DATABASE_URL has unsupported scheme `{0}`: use postgres://… or leave it unset for the embedded store"
    )]
    UnsupportedScheme(String),
    #[error("DATABASE_URL is malformed: {0}")]
    MalformedUrl(String),
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("data directory {path} is not usable: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("cannot open the embedded store {path}: {reason}")]
    Sqlite { path: PathBuf, reason: String },
    #[error("applying migrations failed: {0}")]
    Migrate(String),
}

/// A connection pool to one of the two supported backends.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A connection idle for longer than this is pinged before it is lent out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The pool of every PostgreSQL connection of the store.
///
/// sqlx pings a connection (a round trip) each time it goes back to the pool, and by
/// default again each time it is taken out: two round trips beside every statement.
/// One that was in use a moment ago has just answered its ping on the way back, so
/// only a connection idle for longer than [`PING_IF_IDLE_FOR`] is pinged first (after a
/// quiet spell, an outage, a restart of the database); a failed ping closes it and the
/// pool lends another.
fn pg_pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// At most this many connections are kept out of the pool between statements.
const KEPT_AT_MOST: usize = 4;

/// How long a kept connection may wait unused before it goes back to the pool.
const KEEP_UNUSED_FOR: Duration = Duration::from_millis(250);

/// PostgreSQL connections kept out of the pool from one statement to the next.
///
/// sqlx pings every connection on its way back to the pool: a round trip beside each
/// statement. Statements that follow one another under load — the store's on the path
/// of a command (appends, loads, version reads), the HTTP idempotency writer's batches —
/// borrow a kept connection when there is one and keep it again after, so that they run
/// on a few connections with no ping between. A kept connection unused for
/// [`KEEP_UNUSED_FOR`] goes back to the pool (a task looks every [`KEEP_UNUSED_FOR`]),
/// so a quiet store holds none for long and other users of the pool are never kept
/// waiting by idle ones. Only a connection whose statement ran to its end is kept: one
/// whose future was dropped half way, or whose statement failed, goes back to the pool,
/// which drains and tests it.
#[derive(Debug, Default)]
pub struct KeptConnections {
    kept: std::sync::Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    sweeping: std::sync::atomic::AtomicBool,
}

impl KeptConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        // Only ever held for a push, a pop or a sweep: a panic cannot leave it half done.
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection kept last, or one from the pool. Dropped, it goes back to the
    /// pool; [`Lent::keep`] keeps it.
    pub async fn lend(self: &Arc<Self>, pool: &PgPool) -> Result<Lent, sqlx::Error> {
        let kept = self.lock().pop();
        let connection = match kept {
            Some((connection, _)) => connection,
            None => pool.acquire().await?,
        };
        Ok(Lent {
            connection,
            home: Arc::clone(self),
        })
    }

    /// Keeps `connection` for the next statement (or gives it back when enough are
    /// kept).
    fn keep(self: &Arc<Self>, connection: PoolConnection<Postgres>) {
        let mut kept = self.lock();
        if kept.len() >= KEPT_AT_MOST {
            return;
        }
        kept.push((connection, Instant::now()));
        drop(kept);
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Gives every kept connection back to the pool.
    pub(crate) fn give_back(&self) {
        drop(std::mem::take(&mut *self.lock()));
    }
}

/// A connection lent by [`KeptConnections`]: dropped, it goes back to the pool.
#[derive(Debug)]
pub struct Lent {
    connection: PoolConnection<Postgres>,
    home: Arc<KeptConnections>,
}

impl Lent {
    /// Keeps the connection for the next statement: call once its statement ran to its
    /// end.
    pub fn keep(self) {
        self.home.keep(self.connection);
    }
}

impl std::ops::Deref for Lent {
    type Target = sqlx::PgConnection;

    fn deref(&self) -> &Self::Target {
        &self.connection
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.connection
    }
}

/// Gives back the connections kept unused for [`KEEP_UNUSED_FOR`], until none is kept
/// (the next `keep` starts another) or the store is gone.
async fn sweep(kept: std::sync::Weak<KeptConnections>) {
    loop {
        tokio::time::sleep(KEEP_UNUSED_FOR).await;
        let Some(kept) = kept.upgrade() else {
            return;
        };
        let mut connections = kept.lock();
        let stale: Vec<_> = connections
            .extract_if(.., |(_, since)| since.elapsed() >= KEEP_UNUSED_FOR)
            .collect();
        let empty = connections.is_empty();
        if empty {
            kept.sweeping
                .store(false, std::sync::atomic::Ordering::Release);
        }
        drop(connections);
        drop(stale);
        if empty {
            return;
        }
    }
}

impl Database {
    /// Opens the configured database. Nothing is created in PostgreSQL; the embedded
    /// store's directory and file are created when missing.
    pub async fn connect(config: &StoreConfig) -> Result<Self, ConnectError> {
        match &config.database_url {
            None => Self::open_sqlite(config).await,
            Some(url) => {
                let scheme = url.split_once("://").map(|(scheme, _)| scheme);
                match scheme {
                    Some("postgres" | "postgresql") => Self::open_postgres(url, config).await,
                    Some(other) => Err(ConnectError::UnsupportedScheme(other.to_owned())),
                    None => Err(ConnectError::MalformedUrl(
                        "expected postgres://user@host:port/database".to_owned(),
                    )),
                }
            }
        }
    }

    async fn open_postgres(url: &str, config: &StoreConfig) -> Result<Self, ConnectError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| ConnectError::MalformedUrl(first_line(&error.to_string())))?
            .application_name("shopagent");
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        );
        // One direct connection first: a pool would only report that it timed out,
        // hiding why (refused, unknown host, authentication, missing database).
        let unreachable = |reason: String| ConnectError::Unreachable {
            target: target.clone(),
            reason,
        };
        let probe = tokio::time::timeout(config.acquire_timeout, options.connect())
            .await
            .map_err(|_| unreachable("no answer within the connect timeout".to_owned()))?
            .map_err(|error| unreachable(first_line(&error.to_string())))?;
        probe.close().await.ok();
        let pool = pg_pool_options(config.max_connections, config.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self::Postgres(pool))
    }

    async fn open_sqlite(config: &StoreConfig) -> Result<Self, ConnectError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|error| ConnectError::DataDir {
            path: dir.clone(),
            reason: error.to_string(),
        })?;
        let path = dir.join(SQLITE_FILE_NAME);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, even on power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.min(8))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|error| ConnectError::Sqlite {
                path: path.clone(),
                reason: first_line(&error.to_string()),
            })?;
        Ok(Self::Sqlite(pool))
    }

    /// A pool on the same database for [`Store::derived`](crate::Store::derived) writes:
    /// on PostgreSQL, up to half as many connections again, whose commits do not wait
    /// for the WAL flush; on SQLite (one writer) the same pool.
    pub fn for_derived_writes(&self) -> Self {
        match self {
            Self::Postgres(pool) => {
                let options = (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]);
                let pool_options = pool.options();
                Self::Postgres(
                    pg_pool_options(
                        pool_options.get_max_connections().div_ceil(2),
                        pool_options.get_acquire_timeout(),
                    )
                    .connect_lazy_with(options),
                )
            }
            Self::Sqlite(_) => self.clone(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            Self::Postgres(_) => &POSTGRES_MIGRATIONS,
            Self::Sqlite(_) => &SQLITE_MIGRATIONS,
        }
    }

    /// Applies every pending migration. Safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<(), ConnectError> {
        let result = match self {
            Self::Postgres(pool) => self.migrator().run(pool).await,
            Self::Sqlite(pool) => self.migrator().run(pool).await,
        };
        result.map_err(|error| ConnectError::Migrate(first_line(&error.to_string())))
    }

    /// True when the database answers and every migration this build knows is applied.
    pub async fn is_ready(&self) -> bool {
        let applied: Result<Vec<i64>, sqlx::Error> = match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await
            }
            Self::Sqlite(pool) => {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await
            }
        };
        match applied {
            Ok(applied) => self
                .migrator()
                .iter()
                .all(|migration| applied.contains(&migration.version)),
            Err(_) => false,
        }
    }

    /// Closes every pooled connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }

    /// Path of the embedded store's file, for messages.
    pub fn sqlite_path(data_dir: &Path) -> PathBuf {
        data_dir.join(SQLITE_FILE_NAME)
    }
}

/// Database drivers put context on later lines; an operator needs the first.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

/// Runs `$body` with `$pool` bound to the database's pool, whatever its backend. The
/// body is compiled once per backend, so one query text serves both.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Database::Postgres($pool) => $body,
            $crate::Database::Sqlite($pool) => $body,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TestStore, admin_url, terminate_backend};

    async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_limit_is_checked_and_replaced_when_the_database_closed_it()
    {
        let test = TestStore::postgres().await;
        // One connection, so that the second statement can only be lent that one or
        // its replacement.
        let config = StoreConfig {
            max_connections: 1,
            ..test.config.clone()
        };
        let Ok(Database::Postgres(pool)) = Database::connect(&config).await else {
            unreachable!("a PostgreSQL pool")
        };
        let first = backend_pid(&pool).await.expect("a connection");
        // Back in the pool once its ping on the way back has answered.
        while pool.num_idle() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Closed from the database's side, as a restart of the database would.
        let admin = PgPool::connect(&admin_url()).await.expect("admin pool");
        terminate_backend(&admin, first).await;
        admin.close().await;

        tokio::time::sleep(PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
        let second = backend_pid(&pool)
            .await
            .expect("the closed connection is replaced, not lent");
        assert_ne!(first, second);
        pool.close().await;
        test.cleanup().await;
    }
}
