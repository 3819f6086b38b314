//! The Kafka publisher against a real broker (tansu), beside the store's append rate,
//! in one run.
//!
//!     cargo bench -p shopagent --bench publisher
//!
//! Environment: `TEST_DATABASE_URL` (server; a throwaway database is created and
//! dropped), `TANSU_BIN` (default `~/.cache/shopagent/tansu/bin/tansu`, which
//! `infra/scripts/test` installs), `BENCH_EVENTS` (backlog, default 200000),
//! `BENCH_SECONDS` (sustained phase, default 10), `BENCH_WRITERS` (default 8).
//!
//! 1. **append** — `BENCH_WRITERS` writers append one event per transaction for
//!    `BENCH_SECONDS`: the rate the store (and so the API, which does more per command)
//!    can append at most.
//! 2. **backlog** — the publisher sends a log of `BENCH_EVENTS` events (about 300-byte
//!    payloads) from its start: events/s to the broker, acknowledged, checkpointed.
//! 3. **sustained** — the writers append at full speed for `BENCH_SECONDS` while the
//!    publisher runs: the lag it ends with, and how long it takes to drain it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shopagent::server::PUBLISH_BATCH;
use shopagent_commands::publisher::LogPublisher;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_commands::{Database, Store, StoreConfig, SubscriberRunner};
use shopagent_connectors::kafka::{KafkaConfig, KafkaStream};
use shopagent_domain::EventMetadata;
use tokio_util::sync::CancellationToken;

// The tests' broker harness: tansu on a free port with SQLite storage.
#[path = "../tests/broker/mod.rs"]
mod broker;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(
    stream: &str,
    first: u64,
    count: u64,
    payload: &serde_json::Value,
) -> Vec<cqrs_es::persist::SerializedEvent> {
    let metadata =
        serde_json::to_value(EventMetadata::new("bench", "bench").to_map()).expect("metadata");
    (0..count)
        .map(|n| cqrs_es::persist::SerializedEvent {
            aggregate_id: stream.to_owned(),
            sequence: (first + n) as usize + 1,
            aggregate_type: "order".into(),
            event_type: "Noted".into(),
            event_version: "1".into(),
            payload: payload.clone(),
            metadata: metadata.clone(),
        })
        .collect()
}

/// `writers` writers append one event per transaction for `seconds`; returns how many.
async fn append_for(store: &Store, writers: u64, seconds: u64, tag: &str) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    let appended = append_until(store, writers, stop, tag).await;
    timer.await.expect("timer");
    appended
}

/// `writers` writers append one event per transaction until `stop`; returns how many.
async fn append_until(store: &Store, writers: u64, stop: Arc<AtomicBool>, tag: &str) -> u64 {
    let appended = Arc::new(AtomicU64::new(0));
    let payload = serde_json::json!({"note": "x".repeat(300)});
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stop, appended, payload) = (
                store.clone(),
                stop.clone(),
                appended.clone(),
                payload.clone(),
            );
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // 200 streams per writer, one event each round.
                    let stream = format!("bench/{tag}-{w}-{}", n % 200);
                    let batch = events(&stream, n / 200, 1, &payload);
                    store.append(&batch, None).await.expect("append");
                    n += 1;
                    appended.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    appended.load(Ordering::Relaxed)
}

async fn lag(store: &Store) -> i64 {
    shopagent_projections::status(store, LogPublisher::NAME)
        .await
        .expect("status")
        .lag_events
}

#[tokio::main]
async fn main() {
    let backlog = env_number("BENCH_EVENTS", 200_000);
    let seconds = env_number("BENCH_SECONDS", 10);
    let writers = env_number("BENCH_WRITERS", 8);
    let (url, name) = create_pg_database().await;
    let db = Database::connect(&StoreConfig::new(Some(url), "unused"))
        .await
        .expect("database");
    db.migrate().await.expect("migrate");
    let store = Store::new(db);

    // 1. The append rate.
    let appended = append_for(&store, writers, seconds, "append").await;
    let append_rate = appended as f64 / seconds as f64;

    // 2. A backlog, published from the start.
    let payload = serde_json::json!({"note": "x".repeat(300)});
    let mut filled = appended;
    let mut stream_number = 0;
    while filled < appended + backlog {
        let batch = events(&format!("bench/backlog-{stream_number}"), 0, 100, &payload);
        store.append(&batch, None).await.expect("append");
        filled += 100;
        stream_number += 1;
    }
    let Some(broker) = broker::Broker::start() else {
        eprintln!("no tansu broker: run infra/scripts/test once, or set TANSU_BIN");
        std::process::exit(1);
    };
    let stream = KafkaStream::new(KafkaConfig::new(broker.address())).expect("producer");
    let publisher = LogPublisher::new(Arc::new(stream), "bench.");
    let kafka = KafkaStream::new(KafkaConfig::new(broker.address())).expect("admin");
    kafka
        .ensure_topics(&[publisher.topic("order")])
        .await
        .expect("topic");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let runner = tokio::spawn(
        SubscriberRunner::new(store.clone(), Arc::new(publisher))
            .with_batch_size(PUBLISH_BATCH)
            .run(shutdown.clone()),
    );
    while lag(&store).await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backlog_seconds = started.elapsed().as_secs_f64();
    let publish_rate = filled as f64 / backlog_seconds;

    // 3. Sustained appends with the publisher running.
    let sustained = append_for(&store, writers, seconds, "sustained").await;
    let behind = lag(&store).await;
    let draining = Instant::now();
    while lag(&store).await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = draining.elapsed().as_secs_f64();
    shutdown.cancel();
    runner.await.expect("publisher");

    println!("| measure | events | seconds | events/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| store append, {writers} writers, one event per transaction | {appended} | {seconds} | {append_rate:.0} |"
    );
    println!(
        "| publisher, backlog from the start (batches of {PUBLISH_BATCH}) | {filled} | {backlog_seconds:.1} | {publish_rate:.0} |"
    );
    println!(
        "| sustained: appended with the publisher running | {sustained} | {seconds} | {:.0} |",
        sustained as f64 / seconds as f64
    );
    println!("\nlag when the writers stopped: {behind} events; drained in {drain:.2} s");
    println!("publisher / append rate: {:.2}", publish_rate / append_rate);
    store.database().close().await;
    drop_pg_database(&name).await;
}
