//! The projection runner: exactly-once batches, crash recovery, catch-up and lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shopagent_commands::test_support::{TestStore, append_amounts};
use shopagent_commands::{Database, Store, StoredEvent};
use shopagent_projections::{
    AggregateCatalog, Projection, ProjectionError, ProjectionRunner, ReadModelTx, on_read_model,
    status,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const STREAMS: usize = 30;
const EVENTS_PER_STREAM: usize = 10;
const TOTAL: usize = STREAMS * EVENTS_PER_STREAM;

/// A deliberately non-idempotent read model: applying an event twice changes the total,
/// so any double application shows.
#[derive(Debug, Default)]
struct Totals {
    fault: Option<Fault>,
    /// The one stream it projects, when not every one.
    only: Option<&'static str>,
    applied: AtomicUsize,
    hanging: Notify,
}

/// What goes wrong at the n-th apply (1-based, counted across batches).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The apply fails.
    Error(usize),
    /// The apply kills its own database connection (PostgreSQL).
    DropConnection(usize),
    /// The apply never returns (the task is then aborted).
    Hang(usize),
}

impl Totals {
    fn with_fault(fault: Fault) -> Self {
        Self {
            fault: Some(fault),
            ..Self::default()
        }
    }
}

#[async_trait::async_trait]
impl Projection for Totals {
    fn name(&self) -> &'static str {
        "test_totals"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["test_totals"]
    }

    fn projects(&self, event: &StoredEvent) -> bool {
        self.only.is_none_or(|only| event.aggregate_id == only)
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        if !self.projects(event) {
            return Ok(());
        }
        let n = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        match self.fault {
            Some(Fault::Error(at)) if at == n => {
                return Err(ProjectionError::Event {
                    position: event.position(),
                    reason: "injected failure".to_owned(),
                });
            }
            Some(Fault::DropConnection(at)) if at == n => {
                if let ReadModelTx::Postgres(tx) = tx {
                    // Kills this very connection mid-transaction; the statement fails.
                    sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Some(Fault::Hang(at)) if at == n => {
                self.hanging.notify_one();
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        let amount = event.payload["amount"].as_i64().unwrap_or_default();
        on_read_model!(tx, conn => {
            sqlx::query(
                "INSERT INTO test_totals (aggregate_id, total, events) VALUES ($1, $2, 1)
                 ON CONFLICT (aggregate_id) DO UPDATE SET
                    total = test_totals.total + excluded.total,
                    events = test_totals.events + 1",
            )
            .bind(&event.aggregate_id)
            .bind(amount)
            .execute(conn)
            .await?;
        });
        Ok(())
    }

    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        on_read_model!(tx, conn => {
            sqlx::query("DELETE FROM test_totals").execute(conn).await?;
        });
        Ok(())
    }
}

async fn create_totals_table(store: &Store) {
    const SQL: &str = "CREATE TABLE test_totals (aggregate_id TEXT PRIMARY KEY, total BIGINT NOT NULL, events BIGINT NOT NULL)";
    match store.database() {
        Database::Postgres(pool) => sqlx::query(SQL).execute(pool).await.map(drop),
        Database::Sqlite(pool) => sqlx::query(SQL).execute(pool).await.map(drop),
    }
    .expect("create test_totals");
}

async fn totals(store: &Store) -> Vec<(String, i64, i64)> {
    const SQL: &str = "SELECT aggregate_id, total, events FROM test_totals ORDER BY aggregate_id";
    match store.database() {
        Database::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
    }
    .expect("read test_totals")
}

/// Stream `s` gets amounts s*100+1 ..= s*100+10, appended a few events at a time.
async fn seed(store: &Store) {
    for s in 0..STREAMS {
        let id = format!("stream-{s:03}");
        let amounts: Vec<i64> = (1..=EVENTS_PER_STREAM as i64)
            .map(|k| s as i64 * 100 + k)
            .collect();
        let mut version = 0;
        for chunk in amounts.chunks(3) {
            version = append_amounts(store, "tally", &id, version, chunk).await;
        }
    }
}

fn expected_totals() -> Vec<(String, i64, i64)> {
    (0..STREAMS)
        .map(|s| {
            let total = (1..=EVENTS_PER_STREAM as i64)
                .map(|k| s as i64 * 100 + k)
                .sum();
            (format!("stream-{s:03}"), total, EVENTS_PER_STREAM as i64)
        })
        .collect()
}

/// Waits until the whole log is readable (see the store suite on PostgreSQL visibility).
async fn settle(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .read_log(Default::default(), u32::MAX)
        .await
        .expect("read")
        .len()
        < TOTAL
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn crash_mid_batch_then_resume(test: &TestStore, fault: Fault) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;

    let faulty = Arc::new(Totals::with_fault(fault));
    let runner = ProjectionRunner::new(store.clone(), faulty.clone()).with_batch_size(100);
    match fault {
        Fault::Error(_) | Fault::DropConnection(_) => {
            let result = runner.catch_up().await;
            assert!(result.is_err(), "the faulty batch fails");
        }
        Fault::Hang(_) => {
            let task = tokio::spawn(runner.run(CancellationToken::new()));
            tokio::time::timeout(Duration::from_secs(30), faulty.hanging.notified())
                .await
                .expect("the runner reaches the hanging event");
            task.abort();
            assert!(task.await.expect_err("aborted").is_cancelled());
        }
    }

    // Only the first, complete batch is in the read model and the checkpoint.
    let after_crash = status(store, "test_totals").await.expect("status");
    assert_eq!(after_crash.events_applied, 100, "{after_crash:?}");
    assert_eq!(after_crash.lag_events, (TOTAL - 100) as i64);
    let partial: i64 = totals(store)
        .await
        .iter()
        .map(|(_, _, events)| events)
        .sum();
    assert_eq!(partial, 100, "no event of the failed batch is visible");

    // A new process resumes from the checkpoint.
    let restarted = test.reopen().await;
    let resumed = ProjectionRunner::new(restarted.clone(), Arc::new(Totals::default()));
    assert_eq!(
        resumed.catch_up().await.expect("resume") as usize,
        TOTAL - 100
    );
    let resumed_rows = totals(store).await;
    assert_eq!(resumed_rows, expected_totals());

    // And the result equals a rebuild from scratch.
    resumed.reset().await.expect("reset");
    assert!(totals(store).await.is_empty());
    assert_eq!(resumed.catch_up().await.expect("rebuild") as usize, TOTAL);
    assert_eq!(totals(store).await, resumed_rows);
    let rebuilt = status(store, "test_totals").await.expect("status");
    assert_eq!(
        (rebuilt.events_applied, rebuilt.lag_events),
        (TOTAL as i64, 0)
    );
    restarted.database().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batch_failing_mid_way_is_rolled_back_and_resumed() {
    let test = TestStore::sqlite().await;
    crash_mid_batch_then_resume(&test, Fault::Error(150)).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runner_aborted_mid_batch_resumes() {
    let test = TestStore::sqlite().await;
    crash_mid_batch_then_resume(&test, Fault::Hang(150)).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_failing_mid_way_is_rolled_back_and_resumed() {
    let test = TestStore::postgres().await;
    crash_mid_batch_then_resume(&test, Fault::Error(150)).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runner_aborted_mid_batch_resumes() {
    let test = TestStore::postgres().await;
    crash_mid_batch_then_resume(&test, Fault::Hang(150)).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_dropped_mid_batch_resumes() {
    let test = TestStore::postgres().await;
    crash_mid_batch_then_resume(&test, Fault::DropConnection(150)).await;
    test.cleanup().await;
}

async fn competing_runners_apply_each_event_once(test: &TestStore) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;
    let other = test.reopen().await;
    let a = ProjectionRunner::new(store.clone(), Arc::new(Totals::default())).with_batch_size(7);
    let b = ProjectionRunner::new(other.clone(), Arc::new(Totals::default())).with_batch_size(7);
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { a.catch_up().await }),
        tokio::spawn(async move { b.catch_up().await })
    );
    let applied = ra.expect("task a").expect("runner a") + rb.expect("task b").expect("runner b");
    assert_eq!(applied as usize, TOTAL);
    assert_eq!(totals(store).await, expected_totals());
    other.database().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_competing_runners_apply_each_event_once() {
    let test = TestStore::sqlite().await;
    competing_runners_apply_each_event_once(&test).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_competing_runners_apply_each_event_once() {
    let test = TestStore::postgres().await;
    competing_runners_apply_each_event_once(&test).await;
    test.cleanup().await;
}

/// A runner starts each batch where it last committed, without reading its checkpoint
/// back; that must not hide a checkpoint moved by another process. Rewound there (ops
/// rebuilding the projection), this runner rebuilds from the start; moved on there (a
/// competing runner), it applies nothing twice.
async fn a_checkpoint_moved_elsewhere_is_followed(test: &TestStore) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;
    let here =
        ProjectionRunner::new(store.clone(), Arc::new(Totals::default())).with_batch_size(100);
    let other = test.reopen().await;
    let elsewhere =
        ProjectionRunner::new(other.clone(), Arc::new(Totals::default())).with_batch_size(100);

    assert_eq!(here.catch_up().await.expect("catch up") as usize, TOTAL);
    elsewhere.reset().await.expect("rewound elsewhere");
    assert!(totals(store).await.is_empty());
    assert_eq!(
        here.catch_up().await.expect("rebuild") as usize,
        TOTAL,
        "the rewound checkpoint is followed, not the one this runner committed"
    );
    assert_eq!(totals(store).await, expected_totals());

    elsewhere.reset().await.expect("rewound again");
    assert_eq!(here.step().await.expect("one batch here"), 100);
    assert_eq!(
        elsewhere.catch_up().await.expect("the rest elsewhere") as usize,
        TOTAL - 100
    );
    assert_eq!(here.catch_up().await.expect("nothing left here"), 0);
    assert_eq!(
        totals(store).await,
        expected_totals(),
        "nothing applied twice"
    );
    other.database().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_checkpoint_moved_elsewhere_is_followed() {
    let test = TestStore::sqlite().await;
    a_checkpoint_moved_elsewhere_is_followed(&test).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_checkpoint_moved_elsewhere_is_followed() {
    let test = TestStore::postgres().await;
    a_checkpoint_moved_elsewhere_is_followed(&test).await;
    test.cleanup().await;
}

/// How many events are after the stored checkpoint of the test projection, and how
/// many it counts as applied.
async fn stored(store: &Store) -> (i64, i64) {
    let status = status(store, "test_totals").await.expect("status");
    (status.lag_events, status.events_applied)
}

async fn batches_it_does_not_project_are_written_with_the_next_it_does(test: &TestStore) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;
    let last = Arc::new(Totals {
        only: Some("stream-029"),
        ..Totals::default()
    });
    let runner = ProjectionRunner::new(store.clone(), last).with_batch_size(100);
    assert_eq!(runner.step().await.expect("first batch"), 100);
    assert_eq!(runner.step().await.expect("second batch"), 100);
    assert_eq!(
        stored(store).await,
        (TOTAL as i64, 0),
        "passed over without a write"
    );
    assert_eq!(runner.step().await.expect("third batch"), 100);
    assert_eq!(
        stored(store).await,
        (0, TOTAL as i64),
        "written past all three batches, each event counted once"
    );
    let expected: Vec<_> = expected_totals()
        .into_iter()
        .filter(|(id, _, _)| id == "stream-029")
        .collect();
    assert_eq!(totals(store).await, expected);
}

async fn batches_it_does_not_project_are_written_once_it_finds_nothing_new(test: &TestStore) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;
    let none = Arc::new(Totals {
        only: Some("no such stream"),
        ..Totals::default()
    });
    let runner = ProjectionRunner::new(store.clone(), none).with_batch_size(100);
    for _ in 0..3 {
        assert_eq!(runner.step().await.expect("batch"), 100);
    }
    assert_eq!(
        stored(store).await,
        (TOTAL as i64, 0),
        "passed over without a write"
    );
    assert_eq!(runner.step().await.expect("nothing new"), 0);
    assert_eq!(stored(store).await, (0, TOTAL as i64));
    assert!(totals(store).await.is_empty());
}

/// A runner begins each batch holding the checkpoint it kept from its last one, and
/// checks it only as it saves the batch: a batch begun after ops paused the projection
/// must commit nothing, and the runner must go on from where it stopped once resumed.
async fn a_projection_paused_after_its_last_batch_applies_nothing_more(test: &TestStore) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;
    let runner =
        ProjectionRunner::new(store.clone(), Arc::new(Totals::default())).with_batch_size(100);
    assert_eq!(runner.step().await.expect("a first batch"), 100);
    let after_one = totals(store).await;

    shopagent_projections::set_paused(store, "test_totals", true)
        .await
        .expect("paused");
    for _ in 0..2 {
        assert_eq!(runner.step().await.expect("paused"), 0);
    }
    assert_eq!(
        totals(store).await,
        after_one,
        "nothing applied while paused"
    );
    assert_eq!(stored(store).await, ((TOTAL - 100) as i64, 100));

    shopagent_projections::set_paused(store, "test_totals", false)
        .await
        .expect("resumed");
    assert_eq!(
        runner.catch_up().await.expect("the rest") as usize,
        TOTAL - 100
    );
    assert_eq!(
        totals(store).await,
        expected_totals(),
        "nothing applied twice"
    );
    assert_eq!(stored(store).await, (0, TOTAL as i64));
}

shopagent_commands::on_both_backends!(
    batches_it_does_not_project_are_written_with_the_next_it_does,
    batches_it_does_not_project_are_written_once_it_finds_nothing_new,
    a_projection_paused_after_its_last_batch_applies_nothing_more,
);

async fn running_catalog_follows_the_log_and_stops_cleanly(store: &Store) {
    let stop = CancellationToken::new();
    let runner = ProjectionRunner::new(store.clone(), Arc::new(AggregateCatalog));
    let task = tokio::spawn(runner.run(stop.clone()));

    let mut version = 0;
    for round in 0..5 {
        version = append_amounts(store, "cart", "cart-1", version, &[round]).await;
        append_amounts(store, "order", &format!("order-{round}"), 0, &[1, 2]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = loop {
        let now = status(store, AggregateCatalog::NAME).await.expect("status");
        if now.lag_events == 0 && now.events_applied == 15 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (caught_up.events_applied, caught_up.lag_events),
        (15, 0),
        "{caught_up:?}"
    );
    assert_eq!(caught_up.checkpoint_position, caught_up.head_position);

    const SQL: &str = "SELECT aggregate_type, aggregate_id, tenant, version, last_event_type
                         FROM aggregate_catalog ORDER BY aggregate_type, aggregate_id";
    let rows: Vec<(String, String, String, i64, String)> = match store.database() {
        Database::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
    }
    .expect("catalog");
    assert_eq!(rows.len(), 6);
    assert_eq!(
        rows[0],
        (
            "cart".into(),
            "cart-1".into(),
            "tenant-a".into(),
            5,
            "Added".into()
        )
    );
    assert!(rows[1..].iter().all(|row| row.0 == "order" && row.3 == 2));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("runner stops promptly")
        .expect("runner task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_running_catalog_follows_the_log_and_stops_cleanly() {
    let test = TestStore::sqlite().await;
    running_catalog_follows_the_log_and_stops_cleanly(&test.store).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_running_catalog_follows_the_log_and_stops_cleanly() {
    let test = TestStore::postgres().await;
    running_catalog_follows_the_log_and_stops_cleanly(&test.store).await;
    test.cleanup().await;
}

/// A projection that cannot apply an event shows it in its status — which event and
/// why — while it retries, skips nothing, and clears it once the event goes through.
async fn a_failing_projection_shows_the_event_and_why(test: &TestStore) {
    let store = &test.store;
    create_totals_table(store).await;
    seed(store).await;
    settle(store).await;
    let runner = ProjectionRunner::new(
        store.clone(),
        Arc::new(Totals::with_fault(Fault::Error(150))),
    )
    .with_batch_size(100);
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));

    let deadline = Instant::now() + Duration::from_secs(30);
    let failing = loop {
        let now = status(store, "test_totals").await.expect("status");
        if now.state == "failing" || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(failing.state, "failing", "{failing:?}");
    assert_eq!(
        failing.events_applied, 100,
        "the failed batch applied nothing"
    );
    assert!(failing.failed_position.is_some());
    assert!(
        failing
            .error
            .as_deref()
            .is_some_and(|e| e.contains("injected failure")),
        "{failing:?}"
    );

    // The fault was transient: the retry goes through, and the status says so.
    let recovered = loop {
        let now = status(store, "test_totals").await.expect("status");
        if (now.state == "running" && now.lag_events == 0) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (
            recovered.state,
            recovered.error.as_deref(),
            recovered.lag_events
        ),
        ("running", None, 0),
        "{recovered:?}"
    );
    assert_eq!(
        totals(store).await,
        expected_totals(),
        "nothing skipped, nothing twice"
    );
    stop.cancel();
    task.await.expect("runner task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_projection_shows_the_event_and_why() {
    let test = TestStore::sqlite().await;
    a_failing_projection_shows_the_event_and_why(&test).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failing_projection_shows_the_event_and_why() {
    let test = TestStore::postgres().await;
    a_failing_projection_shows_the_event_and_why(&test).await;
    test.cleanup().await;
}
