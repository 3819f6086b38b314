//! The auditor's export on PostgreSQL: throughput and memory at two log sizes, beside
//! the raw-database baseline, in one run.
//!
//!     cargo bench -p shopagent-commands --bench export
//!
//! Environment: `TEST_DATABASE_URL` (server; a throwaway database is created and dropped),
//! `BENCH_EVENTS` (the larger log, default 200000; the smaller is a tenth of it).
//!
//! For each size: fill the log (events of 1 KiB payload, 100 per stream), then
//! * raw — `COPY (SELECT * FROM events ORDER BY txid, position) TO STDOUT`, bytes drained;
//! * export — `Exporter` pages chained, hashed and serialized to NDJSON, written to a sink;
//!
//! and the process's peak resident memory after each export (`VmHWM`). Constant memory
//! means the peak does not grow with the log.

use std::time::Instant;

use futures::TryStreamExt;
use shopagent_commands::export::{ExportFilter, Exporter};
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_commands::{Database, Store, StoreConfig};
use shopagent_domain::EventMetadata;
use sqlx::postgres::PgPoolOptions;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Appends events until the log holds `total`, 100 per stream.
async fn fill(store: &Store, from: u64, total: u64) {
    let metadata =
        serde_json::to_value(EventMetadata::new("bench", "bench").to_map()).expect("metadata");
    let payload = serde_json::json!({"note": "x".repeat(1_000)});
    let mut next = from;
    while next < total {
        let stream = next / 100;
        let events: Vec<_> = (next..(next + 100).min(total))
            .map(|n| cqrs_es::persist::SerializedEvent {
                aggregate_id: format!("bench/{stream}"),
                sequence: (n % 100) as usize + 1,
                aggregate_type: "bench".into(),
                event_type: "Noted".into(),
                event_version: "1".into(),
                payload: payload.clone(),
                metadata: metadata.clone(),
            })
            .collect();
        next += events.len() as u64;
        store.append(&events, None).await.expect("append");
    }
}

async fn raw_copy(url: &str) -> (u64, f64) {
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
    (bytes, started.elapsed().as_secs_f64())
}

async fn export(store: &Store) -> (u64, u64, f64) {
    let started = Instant::now();
    let mut exporter = Exporter::start(store.clone(), ExportFilter::default(), None)
        .await
        .expect("export");
    let (mut records, mut bytes) = (0u64, 0u64);
    while let Some(page) = exporter.next_lines().await.expect("page") {
        for line in page {
            records += 1;
            bytes += line.len() as u64 + 1;
        }
    }
    (records - 1, bytes, started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let large: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (url, name) = create_pg_database().await;
    let db = Database::connect(&StoreConfig::new(Some(url.clone()), "unused"))
        .await
        .expect("database");
    db.migrate().await.expect("migrate");
    let store = Store::new(db);

    println!(
        "| events in the log | raw COPY events/s | export events/s | export/raw | export MiB | peak RSS after export MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut filled = 0;
    for size in [large / 10, large] {
        fill(&store, filled, size).await;
        filled = size;
        let (_, raw_seconds) = raw_copy(&url).await;
        let (records, bytes, seconds) = export(&store).await;
        assert_eq!(records, size, "every event exported");
        let raw_rate = size as f64 / raw_seconds;
        let rate = size as f64 / seconds;
        println!(
            "| {size} | {raw_rate:.0} | {rate:.0} | {:.2} | {:.0} | {:.1} |",
            rate / raw_rate,
            bytes as f64 / 1_048_576.0,
            peak_rss_kib() as f64 / 1024.0
        );
    }
    store.database().close().await;
    drop_pg_database(&name).await;
}
