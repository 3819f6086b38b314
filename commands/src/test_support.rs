//! Test helpers shared by the workspace's test suites: a fresh store on each backend.
//!
//! PostgreSQL tests run against the real server named by `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), each in a database of its own that
//! is dropped afterwards. A missing server is a test failure, never a skip.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};
use tempfile::TempDir;
use uuid::Uuid;

use crate::database::{Database, StoreConfig};
use crate::store::Store;

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// A migrated store in a throwaway database or directory.
#[derive(Debug)]
pub struct TestStore {
    pub store: Store,
    pub config: StoreConfig,
    /// Keeps the SQLite directory alive; `None` for PostgreSQL.
    _dir: Option<TempDir>,
    pg_database: Option<String>,
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = StoreConfig::new(None, dir.path());
        let store = open(&config).await;
        Self {
            store,
            config,
            _dir: Some(dir),
            pg_database: None,
        }
    }

    pub async fn postgres() -> Self {
        let (url, name) = create_pg_database().await;
        let config = StoreConfig::new(Some(url), "unused");
        let store = open(&config).await;
        Self {
            store,
            config,
            _dir: None,
            pg_database: Some(name),
        }
    }

    /// Opens a second, independent store on the same database (another "process").
    pub async fn reopen(&self) -> Store {
        open(&self.config).await
    }

    /// Drops the PostgreSQL database. Call at the end of a test; a leftover database
    /// from a failed test is harmless (names are unique).
    pub async fn cleanup(self) {
        self.store.database().close().await;
        if let Some(name) = self.pg_database {
            drop_pg_database(&name).await;
        }
    }
}

impl std::ops::Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// Runs each scenario — an `async fn(&TestStore)` (or `&Store`) — once per backend,
/// each in a fresh store that is dropped afterwards.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let test = $crate::test_support::TestStore::sqlite().await;
                    super::$scenario(&test).await;
                    test.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let test = $crate::test_support::TestStore::postgres().await;
                    super::$scenario(&test).await;
                    test.cleanup().await;
                }
            )*
        }
    };
}

async fn open(config: &StoreConfig) -> Store {
    let db = Database::connect(config)
        .await
        .expect("open the test database");
    db.migrate().await.expect("migrate the test database");
    Store::new(db)
}

/// Creates an empty database on the test server and returns its URL and name.
pub async fn create_pg_database() -> (String, String) {
    let admin = admin_url();
    let options = PgConnectOptions::from_str(&admin).expect("TEST_DATABASE_URL is a valid URL");
    let mut conn = options.connect().await.unwrap_or_else(|error| {
        panic!("PostgreSQL must be running for the test suite (TEST_DATABASE_URL={admin}): {error}")
    });
    let name = format!("shopagent_test_{}", Uuid::new_v4().simple());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    let url = options.database(&name).to_url_lossy().to_string();
    (url, name)
}

pub async fn drop_pg_database(name: &str) {
    let admin = admin_url();
    if let Ok(pool) = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
    {
        let _ = pool
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}

/// Appends `amounts.len()` events of type `Added` (payload `{"amount": n}`) to one
/// stream, starting after `version`, in one append. Returns the new version.
pub async fn append_amounts(
    store: &Store,
    aggregate_type: &str,
    aggregate_id: &str,
    version: usize,
    amounts: &[i64],
) -> usize {
    let events = amounts_events(aggregate_type, aggregate_id, version, amounts);
    store.append(&events, None).await.expect("append");
    version + amounts.len()
}

/// The events [`append_amounts`] appends.
pub fn amounts_events(
    aggregate_type: &str,
    aggregate_id: &str,
    version: usize,
    amounts: &[i64],
) -> Vec<cqrs_es::persist::SerializedEvent> {
    let metadata =
        serde_json::to_value(shopagent_domain::EventMetadata::new("tenant-a", "user:1").to_map())
            .expect("serialize metadata");
    amounts
        .iter()
        .enumerate()
        .map(|(offset, amount)| cqrs_es::persist::SerializedEvent {
            aggregate_id: aggregate_id.to_owned(),
            sequence: version + offset + 1,
            aggregate_type: aggregate_type.to_owned(),
            event_type: "Added".to_owned(),
            event_version: "1".to_owned(),
            payload: serde_json::json!({ "amount": amount }),
            metadata: metadata.clone(),
        })
        .collect()
}

/// The one backend of `pool`'s database, other than `pool`'s own, whose last statement
/// matches `statement` (a `LIKE` pattern): the connection a part of the store keeps.
pub async fn backend_that_ran(pool: &sqlx::PgPool, statement: &str) -> i32 {
    let backends: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE $1 AND pid <> pg_backend_pid()",
    )
    .bind(statement)
    .fetch_all(pool)
    .await
    .expect("backends");
    match backends[..] {
        [backend] => backend,
        _ => panic!("not one backend ran {statement:?}: {backends:?}"),
    }
}

/// Closes backend `pid` from the database's side, as a restart of the database would.
pub async fn terminate_backend(pool: &sqlx::PgPool, pid: i32) {
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .expect("terminate");
    assert!(terminated, "backend {pid} is gone already");
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of `statement` prepared with `parameter_types` and run
/// with `arguments` under its generic plan: the plan a prepared statement may settle on
/// after a few runs, whatever its parameters. The connection is left as it was.
pub async fn explain_generic_plan(
    pool: &sqlx::PgPool,
    parameter_types: &str,
    statement: &str,
    arguments: &str,
) -> serde_json::Value {
    let mut connection = pool.acquire().await.expect("a connection");
    sqlx::raw_sql(&format!(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE explained ({parameter_types}) AS {statement};"
    ))
    .execute(&mut *connection)
    .await
    .expect("prepare the statement");
    let plan = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE explained ({arguments})"
    ))
    .fetch_one(&mut *connection)
    .await
    .expect("explain the statement");
    sqlx::raw_sql("DEALLOCATE explained; RESET plan_cache_mode;")
        .execute(&mut *connection)
        .await
        .expect("reset the connection");
    plan
}
