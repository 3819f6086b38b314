//! Event-store throughput on PostgreSQL beside the raw-database baseline, in one run.
//!
//!     cargo bench -p shopagent-commands --bench append
//!
//! Environment: `BENCH_DATABASE_URL` (server to use; a throwaway database is created
//! and dropped; default `postgres://postgres@127.0.0.1:5432/postgres`),
//! `BENCH_SECONDS` (per measurement, default 5), `BENCH_WRITERS` (default `1,8,32`).
//!
//! Measured, at each writer count:
//! * raw append — `BEGIN; INSERT one row; COMMIT` into a bare table (pgbench-style);
//! * store append — `Store::append` of one event (the gap-safe global log, metadata,
//!   event id), the same work a command's commit does;
//! * raw load + append — read a stream's rows, insert the next one, in a transaction;
//! * command — `CommandBus::execute`: load the stream, decide, append.
//!
//! * pgbench append — the same one-row transaction driven by `pgbench` (C client, one
//!   connection per writer), when `pgbench` is on the PATH: the figure DESIGN.md quotes.
//!
//! And once: reading the whole log, raw `COPY … TO STDOUT` beside `Store::read_log`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use shopagent_commands::test_support::drop_pg_database;
use shopagent_commands::{CommandBus, Database, LogCursor, Store, StoreConfig};
use shopagent_domain::{Aggregate, DomainEvent, EventMetadata};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Incremented {
    by: i64,
}

impl DomainEvent for Incremented {
    fn event_type(&self) -> &'static str {
        "Incremented"
    }
    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "bench_counter";
    type Command = i64;
    type Event = Incremented;
    type Error = Never;
    fn decide(&self, by: i64) -> Result<Vec<Incremented>, Never> {
        Ok(vec![Incremented { by }])
    }
    fn apply(&mut self, event: Incremented) {
        self.value += event.by;
    }
}

/// Streams per writer: commands rotate over them, so streams grow slowly, as carts do.
const STREAMS_PER_WRITER: u64 = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| shopagent_commands::test_support::DEFAULT_TEST_DATABASE_URL.into());
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let writers: Vec<usize> = std::env::var("BENCH_WRITERS")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(seconds);

    let admin_options: sqlx::postgres::PgConnectOptions = admin.parse()?;
    let name = format!("shopagent_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin_options.connect().await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    conn.close().await?;
    let url = with_database(&admin, &name);

    let result = run(&url, &writers, window).await;
    drop_pg_database(&name).await;
    result
}

async fn run(url: &str, writers: &[usize], window: Duration) -> anyhow::Result<()> {
    let max_writers = writers.iter().copied().max().unwrap_or(1) as u32;
    let mut config = StoreConfig::new(Some(url.to_owned()), "unused");
    config.max_connections = max_writers + 2;
    let db = Database::connect(&config).await?;
    db.migrate().await?;
    let store = Store::new(db);
    let raw = PgPoolOptions::new()
        .max_connections(max_writers + 2)
        .connect(url)
        .await?;
    raw.execute(
        "CREATE TABLE raw_events (stream text NOT NULL, seq bigint NOT NULL, payload jsonb NOT NULL,
                                  PRIMARY KEY (stream, seq))",
    )
    .await?;
    let server: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&raw)
        .await?;

    println!(
        "PostgreSQL {server}; {} s per measurement; {} CPUs",
        window.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| writers | pgbench append/s | raw append/s | store append/s | store/raw | raw load+append/s | command/s | command/raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in writers {
        let pgbench = pgbench_append(url, n, window).await;
        let raw_append = measure(n, window, {
            let raw = raw.clone();
            move |w, i| {
                let raw = raw.clone();
                async move { raw_append(&raw, w, i).await }
            }
        })
        .await;
        let store_append = measure(n, window, {
            let store = store.clone();
            move |w, i| {
                let store = store.clone();
                async move { store_append(&store, w, i).await }
            }
        })
        .await;
        let raw_load_append = measure(n, window, {
            let raw = raw.clone();
            move |w, i| {
                let raw = raw.clone();
                async move { raw_load_append(&raw, w, i).await }
            }
        })
        .await;
        let bus = Arc::new(CommandBus::<Counter>::new(store.clone()));
        let command = measure(n, window, move |w, i| {
            let bus = bus.clone();
            async move {
                let stream = format!("cmd-{w}-{}", i % STREAMS_PER_WRITER);
                bus.execute(&stream, 1, EventMetadata::new("bench", "bench"))
                    .await
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
        })
        .await;
        let pgbench = pgbench.map_or_else(|| "n/a".to_owned(), |tps| format!("{tps:.0}"));
        println!(
            "| {n} | {pgbench} | {raw_append:.0} | {store_append:.0} | {:.2} | {raw_load_append:.0} | {command:.0} | {:.2} |",
            store_append / raw_append,
            command / raw_load_append
        );
    }

    let (raw_read, store_read, events) = read_all(&raw, &store).await?;
    println!();
    println!("| full-log read ({events} events) | events/s |");
    println!("|---|---:|");
    println!("| raw `COPY events TO STDOUT` | {raw_read:.0} |");
    println!("| `Store::read_log`, pages of 1000 | {store_read:.0} |");
    println!("| ratio | {:.2} |", store_read / raw_read);
    store.database().close().await;
    raw.close().await;
    Ok(())
}

/// `url` with its database replaced by `database` (a plain URL that libpq accepts too).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// Runs `op(writer, iteration)` on `writers` concurrent tasks for `window`; returns ops/s.
async fn measure<F, Fut>(writers: usize, window: Duration, op: F) -> f64
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + window;
    let tasks: Vec<_> = (0..writers as u64)
        .map(|w| {
            let (op, done) = (op.clone(), done.clone());
            // Distinct writer ids per measurement keep streams apart across runs.
            let writer = w + 1_000 * writers as u64;
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    if let Err(error) = op(writer, i).await {
                        eprintln!("operation failed: {error}");
                        return;
                    }
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Transactions/s of `pgbench` running the one-row append with `clients` connections, or
/// `None` when pgbench is not installed or fails.
async fn pgbench_append(url: &str, clients: usize, window: Duration) -> Option<f64> {
    let script = std::env::temp_dir().join(format!("shopagent-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set s random(1, 2000000000)\n\
         BEGIN;\n\
         INSERT INTO raw_events (stream, seq, payload) VALUES ('pgbench-' || :client_id || '-' || :s, 1, '{\"by\": 1}');\n\
         COMMIT;\n",
    )
    .ok()?;
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-f"])
        .arg(&script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &window.as_secs().max(1).to_string(), url])
        .output()
        .await
        .ok()?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    if tps.is_none() {
        eprintln!(
            "pgbench: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    tps
}

async fn raw_append(raw: &PgPool, writer: u64, i: u64) -> anyhow::Result<()> {
    let mut tx = raw.begin().await?;
    sqlx::query("INSERT INTO raw_events (stream, seq, payload) VALUES ($1, $2, $3)")
        .bind(format!("append-{writer}"))
        .bind(i as i64 + 1)
        .bind(serde_json::json!({"by": 1}))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn store_append(store: &Store, writer: u64, i: u64) -> anyhow::Result<()> {
    let metadata = serde_json::to_value(EventMetadata::new("bench", "bench").to_map())?;
    let event = cqrs_es::persist::SerializedEvent {
        aggregate_id: format!("append-{writer}"),
        sequence: i as usize + 1,
        aggregate_type: "bench_counter".into(),
        event_type: "Incremented".into(),
        event_version: "1".into(),
        payload: serde_json::json!({"by": 1}),
        metadata,
    };
    store.append(&[event], None).await?;
    Ok(())
}

async fn raw_load_append(raw: &PgPool, writer: u64, i: u64) -> anyhow::Result<()> {
    let stream = format!("load-{writer}-{}", i % STREAMS_PER_WRITER);
    let mut tx = raw.begin().await?;
    let rows: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT seq, payload FROM raw_events WHERE stream = $1 ORDER BY seq")
            .bind(&stream)
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("INSERT INTO raw_events (stream, seq, payload) VALUES ($1, $2, $3)")
        .bind(&stream)
        .bind(rows.len() as i64 + 1)
        .bind(serde_json::json!({"by": 1}))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Events/s reading the whole `events` table: raw COPY, then the store's reader.
async fn read_all(raw: &PgPool, store: &Store) -> anyhow::Result<(f64, f64, u64)> {
    let mut conn = raw.acquire().await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_out_raw("COPY (SELECT * FROM events ORDER BY txid, position) TO STDOUT")
        .await?;
    let mut lines = 0u64;
    while let Some(chunk) = copy.try_next().await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let raw_rate = lines as f64 / started.elapsed().as_secs_f64();
    drop(copy);

    let started = Instant::now();
    let mut cursor = LogCursor::START;
    let mut read = 0u64;
    loop {
        let page = store.read_log(cursor, 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        read += page.len() as u64;
    }
    let store_rate = read as f64 / started.elapsed().as_secs_f64();
    Ok((raw_rate, store_rate, read))
}
