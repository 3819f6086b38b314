//! Zero-downtime rebuilds and single-instance runners: a rebuild under writes and reads
//! switches to a model equal to a fresh one, readers never see an error or a smaller
//! model; one rebuild at a time; a cancelled rebuild leaves the live model untouched;
//! two instances run a projection on one of them only, and the other takes over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shopagent_commands::test_support::{TestStore, append_amounts};
use shopagent_commands::{Database, Store, StoredEvent};
use shopagent_projections::{
    AggregateCatalog, Projection, ProjectionError, ProjectionRunner, ReadModelTx, Rebuild,
    RebuildError, status,
};
use tokio_util::sync::CancellationToken;

type CatalogRow = (String, String, String, i64, String, i64);

async fn catalog(store: &Store) -> Vec<CatalogRow> {
    const SQL: &str =
        "SELECT aggregate_type, aggregate_id, tenant, version, last_event_type, last_position
                         FROM aggregate_catalog ORDER BY aggregate_type, aggregate_id";
    match store.database() {
        Database::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
    }
    .expect("read the catalog")
}

/// Rows and the sum of versions: what a reader sees of the catalog.
async fn catalog_size(store: &Store) -> Result<(i64, i64), sqlx::Error> {
    const SQL: &str =
        "SELECT COUNT(*), CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM aggregate_catalog";
    match store.database() {
        Database::Postgres(pool) => sqlx::query_as(SQL).fetch_one(pool).await,
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_one(pool).await,
    }
}

/// The catalog's index names and definitions, as the database describes them.
async fn catalog_indexes(store: &Store) -> Vec<(String, String)> {
    match store.database() {
        Database::Postgres(pool) => {
            sqlx::query_as(
                "SELECT indexname, indexdef FROM pg_indexes
              WHERE tablename = 'aggregate_catalog' AND schemaname = current_schema()
              ORDER BY indexname",
            )
            .fetch_all(pool)
            .await
        }
        Database::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT name, COALESCE(sql, '') FROM sqlite_master
              WHERE tbl_name = 'aggregate_catalog' ORDER BY name",
            )
            .fetch_all(pool)
            .await
        }
    }
    .expect("indexes")
}

async fn seed(store: &Store, streams: usize, events: usize) {
    for s in 0..streams {
        let amounts: Vec<i64> = (1..=events as i64).collect();
        append_amounts(store, "tally", &format!("seed-{s:04}"), 0, &amounts).await;
    }
}

/// Waits until the projection `name` has applied every committed event.
async fn caught_up(store: &Store, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = status(store, name).await.expect("status");
        if status.lag_events == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never caught up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_rebuild_under_load_switches_to_a_model_equal_to_a_fresh_one(test: &TestStore) {
    let store = &test.store;
    seed(store, 60, 20).await;
    let indexes_before = catalog_indexes(store).await;
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(
        ProjectionRunner::new(store.clone(), Arc::new(AggregateCatalog)).run(shutdown.clone()),
    );
    caught_up(store, AggregateCatalog::NAME).await;

    // Writers append and readers query throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut written = 0;
            while !stop.load(Ordering::Relaxed) {
                append_amounts(&store, "tally", &format!("live-{written:05}"), 0, &[1, 2]).await;
                written += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            written
        }
    });
    let reader = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut last = (0, 0);
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let seen = catalog_size(&store).await.expect("reads never fail");
                assert!(
                    seen.0 >= last.0 && seen.1 >= last.1,
                    "the model shrank from {last:?} to {seen:?}"
                );
                last = seen;
                reads += 1;
            }
            reads
        }
    });

    let mut batches = 0;
    let rebuilt = Rebuild::new(store.clone(), Arc::new(AggregateCatalog))
        .with_batch_size(100)
        .run(&CancellationToken::new(), |_| batches += 1)
        .await
        .expect("rebuild");
    assert!(batches >= 12, "{batches} batches for 1200+ events");
    assert!(rebuilt.applied >= 1_200);

    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    let reads = reader.await.expect("reader");
    assert!(written > 0 && reads > 0, "{written} writes, {reads} reads");
    caught_up(store, AggregateCatalog::NAME).await;
    let after_switch = catalog(store).await;
    assert_eq!(after_switch.len(), 60 + written);
    assert_eq!(catalog_indexes(store).await, indexes_before);
    let settled = status(store, AggregateCatalog::NAME).await.expect("status");
    assert_eq!((settled.state, settled.rebuild), ("running", None));

    // A fresh build from the start of the log gives the same rows.
    shutdown.cancel();
    live.await.expect("live runner");
    let fresh = ProjectionRunner::new(store.clone(), Arc::new(AggregateCatalog));
    fresh.reset().await.expect("reset");
    caught_up_with(&fresh).await;
    assert_eq!(catalog(store).await, after_switch);
}

async fn caught_up_with(runner: &ProjectionRunner) {
    runner.catch_up_to_head().await.expect("catch up");
}

async fn one_rebuild_at_a_time(test: &TestStore) {
    let store = &test.store;
    seed(store, 100, 30).await;
    // The claim is what keeps a second rebuild out: the first is claimed before it
    // runs, so the second meets it however quickly the first would have finished.
    let first = Rebuild::new(store.clone(), Arc::new(AggregateCatalog)).with_batch_size(10);
    first
        .claim()
        .await
        .expect("the first rebuild claims the projection");
    let status = status(store, AggregateCatalog::NAME).await.expect("status");
    assert_eq!(status.state, "rebuilding", "{status:?}");
    assert!(status.rebuild.is_some());
    let second = Rebuild::new(store.clone(), Arc::new(AggregateCatalog))
        .run(&CancellationToken::new(), |_| {})
        .await;
    assert!(
        matches!(second, Err(RebuildError::AlreadyRunning(_))),
        "{second:?}"
    );
    first
        .run_claimed(&CancellationToken::new(), |_| {})
        .await
        .expect("the first rebuild completes");
    assert_eq!(catalog(store).await.len(), 100);
}

async fn a_cancelled_rebuild_leaves_the_live_model_untouched(test: &TestStore) {
    let store = &test.store;
    seed(store, 20, 5).await;
    caught_up_with(&ProjectionRunner::new(
        store.clone(),
        Arc::new(AggregateCatalog),
    ))
    .await;
    // A damaged live model: a rebuild writing into it (instead of beside it) would show.
    const DAMAGE: &str = "UPDATE aggregate_catalog SET version = 999";
    match store.database() {
        Database::Postgres(pool) => sqlx::query(DAMAGE).execute(pool).await.map(drop),
        Database::Sqlite(pool) => sqlx::query(DAMAGE).execute(pool).await.map(drop),
    }
    .expect("damage");
    let before = catalog(store).await;
    let cancel = CancellationToken::new();
    let cancelled = Rebuild::new(store.clone(), Arc::new(AggregateCatalog))
        .with_batch_size(10)
        .run(&cancel, |progress| {
            if progress.applied >= 30 {
                cancel.cancel();
            }
        })
        .await;
    assert!(
        matches!(cancelled, Err(RebuildError::Cancelled)),
        "{cancelled:?}"
    );
    assert_eq!(catalog(store).await, before);
    let after = status(store, AggregateCatalog::NAME).await.expect("status");
    assert_eq!((after.state, after.rebuild), ("running", None));
    if let Database::Postgres(pool) = store.database() {
        let leftovers: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_namespace WHERE nspname LIKE 'shopagent_rebuild_%'",
        )
        .fetch_one(pool)
        .await
        .expect("schemas");
        assert_eq!(leftovers, 0);
    }
    // And a rebuild may run again at once; it repairs the damage.
    Rebuild::new(store.clone(), Arc::new(AggregateCatalog))
        .run(&CancellationToken::new(), |_| {})
        .await
        .expect("a new rebuild");
    let repaired = catalog(store).await;
    assert_eq!(repaired.len(), before.len());
    assert!(repaired.iter().all(|row| row.3 == 5), "{repaired:?}");
}

/// Counts the events each instance applies to a shared catalog.
#[derive(Debug, Default)]
struct Counted {
    applied: AtomicUsize,
}

#[async_trait::async_trait]
impl Projection for Counted {
    fn name(&self) -> &'static str {
        AggregateCatalog::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        AggregateCatalog.tables()
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        AggregateCatalog.apply(tx, event).await
    }

    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        AggregateCatalog.reset(tx).await
    }
}

/// The catalog's batched writes give the rows its event-by-event writes give.
async fn batched_and_event_by_event_catalogs_agree(test: &TestStore) {
    let store = &test.store;
    // Streams interleaved, several events of a stream in one batch.
    for round in 0..6 {
        for s in 0..15 {
            append_amounts(store, "tally", &format!("mixed-{s:02}"), round * 2, &[1, 2]).await;
        }
    }
    let one_by_one =
        ProjectionRunner::new(store.clone(), Arc::new(Counted::default())).with_batch_size(7);
    caught_up_with(&one_by_one).await;
    let expected = catalog(store).await;
    assert_eq!(expected.len(), 15);
    let batched = ProjectionRunner::new(store.clone(), Arc::new(AggregateCatalog));
    batched.reset().await.expect("reset");
    caught_up_with(&batched).await;
    let mut got = catalog(store).await;
    // created_at / updated_at are not in the compared columns; versions and positions are.
    got.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(got, expected);
}

/// Two "instances" (two stores on one PostgreSQL database) run the same projection:
/// one applies everything; when it dies the other takes over within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_instance_runs_a_projection_and_the_other_takes_over() {
    let test = TestStore::postgres().await;
    let other = test.reopen().await;
    let (first, second) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
    let first_stop = CancellationToken::new();
    let second_stop = CancellationToken::new();
    let first_task = tokio::spawn(
        ProjectionRunner::new(test.store.clone(), first.clone()).run(first_stop.clone()),
    );
    // The first instance holds the lease before the second starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_task =
        tokio::spawn(ProjectionRunner::new(other.clone(), second.clone()).run(second_stop.clone()));
    seed(&test.store, 10, 10).await;
    caught_up(&test.store, AggregateCatalog::NAME).await;
    assert_eq!(first.applied.load(Ordering::SeqCst), 100);
    assert_eq!(
        second.applied.load(Ordering::SeqCst),
        0,
        "the standby applied nothing"
    );

    // The holder dies abruptly: its task is dropped mid-flight with its lease session.
    first_task.abort();
    let _ = first_task.await;
    let died = Instant::now();
    for s in 0..5 {
        append_amounts(&test.store, "tally", &format!("after-{s}"), 0, &[1, 2]).await;
    }
    caught_up(&test.store, AggregateCatalog::NAME).await;
    let takeover = died.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "the standby took {takeover:?} to take over"
    );
    assert_eq!(second.applied.load(Ordering::SeqCst), 10);
    assert_eq!(catalog(&test.store).await.len(), 15);
    second_stop.cancel();
    second_task.await.expect("second runner");
    first_stop.cancel();
    other.database().close().await;
    test.cleanup().await;
}

shopagent_commands::on_both_backends!(
    a_rebuild_under_load_switches_to_a_model_equal_to_a_fresh_one,
    one_rebuild_at_a_time,
    a_cancelled_rebuild_leaves_the_live_model_untouched,
    batched_and_event_by_event_catalogs_agree,
);
