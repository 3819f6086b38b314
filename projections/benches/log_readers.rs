//! Reading the whole log on PostgreSQL, three ways, in one run on one log: the raw
//! database read, the auditor's export, and a zero-downtime rebuild of a projection.
//!
//!     cargo bench -p shopagent-projections --bench log_readers
//!
//! Environment: `TEST_DATABASE_URL` (server; a throwaway database is created and
//! dropped), `BENCH_EVENTS` (default 1000000), `BENCH_PAYLOAD` (payload bytes per
//! event, default 500).
//!
//! The log is filled with events of one payload size, 100 per stream. Then:
//! * raw — `COPY (SELECT * FROM events ORDER BY txid, position) TO STDOUT`, bytes drained;
//! * export — `Exporter` pages chained, hashed and serialized to NDJSON, into a sink;
//! * rebuild — `Rebuild` of `aggregate_catalog` (every event updates its stream's row):
//!   read, applied to the new version, switched in;
//!
//! each with events/s, its ratio to raw, and the process's peak resident memory after it.

use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use shopagent_commands::export::{ExportFilter, Exporter};
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_commands::{Database, Store, StoreConfig};
use shopagent_domain::EventMetadata;
use shopagent_projections::{AggregateCatalog, Rebuild};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Appends `total` events, 100 per stream, from four writers.
async fn fill(store: &Store, total: u64, payload_bytes: usize) {
    let metadata =
        serde_json::to_value(EventMetadata::new("bench", "bench").to_map()).expect("metadata");
    let payload = serde_json::json!({"note": "x".repeat(payload_bytes)});
    let streams = total.div_ceil(100);
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (store, metadata, payload) = (store.clone(), metadata.clone(), payload.clone());
            tokio::spawn(async move {
                for stream in (writer..streams).step_by(4) {
                    let first = stream * 100;
                    let events: Vec<_> = (first..(first + 100).min(total))
                        .map(|n| cqrs_es::persist::SerializedEvent {
                            aggregate_id: format!("bench/{stream}"),
                            sequence: (n - first) as usize + 1,
                            aggregate_type: "bench".into(),
                            event_type: "Noted".into(),
                            event_version: "1".into(),
                            payload: payload.clone(),
                            metadata: metadata.clone(),
                        })
                        .collect();
                    store.append(&events, None).await.expect("append");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
}

async fn raw_copy(url: &str) -> f64 {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("pool");
    let mut conn = pool.acquire().await.expect("connection");
    let started = Instant::now();
    let mut copy = conn
        .copy_out_raw("COPY (SELECT * FROM events ORDER BY txid, position) TO STDOUT")
        .await
        .expect("copy");
    let mut bytes = 0u64;
    while let Some(chunk) = copy.try_next().await.expect("chunk") {
        bytes += chunk.len() as u64;
    }
    assert!(bytes > 0);
    started.elapsed().as_secs_f64()
}

async fn export(store: &Store) -> (u64, f64) {
    let started = Instant::now();
    let mut exporter = Exporter::start(store.clone(), ExportFilter::default(), None)
        .await
        .expect("export");
    let mut records = 0u64;
    while let Some(page) = exporter.next_lines().await.expect("page") {
        records += page.len() as u64;
    }
    (records - 1, started.elapsed().as_secs_f64())
}

async fn rebuild(store: &Store) -> (u64, f64) {
    let started = Instant::now();
    let rebuilt = Rebuild::new(store.clone(), Arc::new(AggregateCatalog))
        .run(&CancellationToken::new(), |_| {})
        .await
        .expect("rebuild");
    (rebuilt.applied, started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let total = env_number("BENCH_EVENTS", 1_000_000);
    let payload = env_number("BENCH_PAYLOAD", 500) as usize;
    let (url, name) = create_pg_database().await;
    let db = Database::connect(&StoreConfig::new(Some(url.clone()), "unused"))
        .await
        .expect("database");
    db.migrate().await.expect("migrate");
    let store = Store::new(db);

    let started = Instant::now();
    fill(&store, total, payload).await;
    eprintln!(
        "filled {total} events of {payload} payload bytes in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let raw_seconds = raw_copy(&url).await;
    let raw_rate = total as f64 / raw_seconds;
    let rss_before = peak_rss_mib();
    let (exported, export_seconds) = export(&store).await;
    assert_eq!(exported, total, "every event exported");
    let rss_export = peak_rss_mib();
    let (rebuilt, rebuild_seconds) = rebuild(&store).await;
    assert_eq!(rebuilt, total, "every event applied");
    let rss_rebuild = peak_rss_mib();

    println!("| reader | events | seconds | events/s | ratio to raw | peak RSS after, MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| raw `COPY … TO STDOUT` | {total} | {raw_seconds:.1} | {raw_rate:.0} | 1.00 | {rss_before:.1} |"
    );
    for (reader, seconds, rss) in [
        ("export (hash-chained NDJSON)", export_seconds, rss_export),
        (
            "rebuild of `aggregate_catalog`",
            rebuild_seconds,
            rss_rebuild,
        ),
    ] {
        let rate = total as f64 / seconds;
        println!(
            "| {reader} | {total} | {seconds:.1} | {rate:.0} | {:.2} | {rss:.1} |",
            rate / raw_rate
        );
    }
    store.database().close().await;
    drop_pg_database(&name).await;
}
