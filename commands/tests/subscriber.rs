//! Subscribers with side effects: every event at least once, in order, never skipped;
//! a failure or a crash repeats an event, never loses one; one instance at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shopagent_commands::test_support::{TestStore, append_amounts};
use shopagent_commands::{
    HandlerError, LogCursor, Store, StoredEvent, Subscriber, SubscriberRunner,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records every event it handles; can fail or hang once at a chosen position in the
/// sequence of handled events.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Uuid>>,
    fail_once_at: Mutex<Option<usize>>,
    hang_once_at: Mutex<Option<usize>>,
    hanging: Notify,
}

#[async_trait::async_trait]
impl Subscriber for Recorder {
    fn name(&self) -> &'static str {
        "test_recorder"
    }

    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let n = {
            let mut seen = self.seen.lock().expect("lock");
            seen.push(event.event_id);
            seen.len()
        };
        if self
            .fail_once_at
            .lock()
            .expect("lock")
            .take_if(|at| *at == n)
            .is_some()
        {
            return Err(HandlerError("merchant timed out".into()));
        }
        if self
            .hang_once_at
            .lock()
            .expect("lock")
            .take_if(|at| *at == n)
            .is_some()
        {
            // The side effect happened; the process dies before the checkpoint moves.
            self.hanging.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

impl Recorder {
    fn seen(&self) -> Vec<Uuid> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn seed(store: &Store, events: usize) -> Vec<Uuid> {
    for n in 0..events {
        append_amounts(store, "tally", &format!("t-{n}"), 0, &[1]).await;
    }
    readable_log(store, events)
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

/// The log once it holds `events` events: on PostgreSQL an event becomes readable only
/// once older transactions in the cluster end.
async fn readable_log(store: &Store, events: usize) -> Vec<StoredEvent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = store
            .read_log(LogCursor::START, u32::MAX)
            .await
            .expect("read");
        if log.len() == events || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events after the recorder's checkpoint.
async fn lag(store: &Store) -> i64 {
    const SQL: &str =
        "SELECT txid, position FROM projection_checkpoints WHERE name = 'test_recorder'";
    let (txid, position): (i64, i64) = match store.database() {
        shopagent_commands::Database::Postgres(pool) => sqlx::query_as(SQL).fetch_one(pool).await,
        shopagent_commands::Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_one(pool).await,
    }
    .expect("checkpoint");
    store
        .count_after(LogCursor { txid, position })
        .await
        .expect("count")
}

async fn drain(runner: &SubscriberRunner) {
    loop {
        let progress = runner.step().await.expect("step");
        if progress.handled == 0 && !progress.failed {
            return;
        }
    }
}

shopagent_commands::on_both_backends!(
    every_event_is_handled_once_in_log_order,
    a_failed_event_is_retried_and_nothing_after_it_is_skipped,
    a_crash_after_the_side_effect_repeats_the_event_but_loses_none,
    events_passed_over_move_the_checkpoint_and_are_not_handled,
    a_batch_with_nothing_to_act_on_is_written_when_the_reader_next_finds_nothing,
    events_passed_over_in_earlier_batches_are_written_with_the_next_event_acted_on,
    partitions_are_handled_at_the_same_time_each_in_log_order,
    a_failure_in_one_partition_repeats_only_that_event,
);

/// Handles each tally's events in order, different tallies at the same time; can fail
/// once on a chosen event, and can hold the first event of `t-0` until an event of
/// another tally has been handled.
#[derive(Default)]
struct ByTally {
    seen: Mutex<Vec<(String, Uuid)>>,
    fail_once: Mutex<Option<Uuid>>,
    hold_first_of_t0: bool,
    other_tally_handled: Notify,
}

#[async_trait::async_trait]
impl Subscriber for ByTally {
    fn name(&self) -> &'static str {
        "test_recorder"
    }

    fn concurrency(&self) -> usize {
        4
    }

    fn partition(&self, event: &StoredEvent) -> Option<String> {
        Some(event.aggregate_id.clone())
    }

    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let first_of_t0 = event.aggregate_id == "t-0"
            && !self
                .seen
                .lock()
                .expect("lock")
                .iter()
                .any(|(tally, _)| tally == "t-0");
        if self.hold_first_of_t0 && first_of_t0 {
            // Handled one at a time, the log would never reach another tally's event.
            tokio::time::timeout(Duration::from_secs(10), self.other_tally_handled.notified())
                .await
                .map_err(|_| HandlerError("no other tally was handled meanwhile".into()))?;
        }
        self.seen
            .lock()
            .expect("lock")
            .push((event.aggregate_id.clone(), event.event_id));
        if event.aggregate_id != "t-0" {
            self.other_tally_handled.notify_one();
        }
        if self
            .fail_once
            .lock()
            .expect("lock")
            .take_if(|id| *id == event.event_id)
            .is_some()
        {
            return Err(HandlerError("merchant timed out".into()));
        }
        Ok(())
    }
}

/// Four tallies of five events each, appended round-robin; the log as (tally, event).
async fn seed_tallies(store: &Store) -> Vec<(String, Uuid)> {
    for round in 0..5 {
        for tally in 0..4 {
            append_amounts(store, "tally", &format!("t-{tally}"), round, &[1]).await;
        }
    }
    readable_log(store, 20)
        .await
        .into_iter()
        .map(|e| (e.aggregate_id, e.event_id))
        .collect()
}

/// The events of `tally`, in the order of `events`.
fn of_tally(events: &[(String, Uuid)], tally: &str) -> Vec<Uuid> {
    events
        .iter()
        .filter(|(t, _)| t == tally)
        .map(|(_, id)| *id)
        .collect()
}

async fn partitions_are_handled_at_the_same_time_each_in_log_order(test: &TestStore) {
    let log = seed_tallies(&test.store).await;
    let by_tally = Arc::new(ByTally {
        hold_first_of_t0: true,
        ..ByTally::default()
    });
    let runner = SubscriberRunner::new(test.store.clone(), by_tally.clone());
    let progress = runner.step().await.expect("step");
    assert_eq!(
        (progress.handled, progress.failed),
        (20, false),
        "{:?}",
        runner.last_error()
    );
    let seen = by_tally.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 20, "every event once");
    for tally in ["t-0", "t-1", "t-2", "t-3"] {
        assert_eq!(
            of_tally(&seen, tally),
            of_tally(&log, tally),
            "{tally} in order"
        );
    }
    assert_eq!(lag(&test.store).await, 0);
}

async fn a_failure_in_one_partition_repeats_only_that_event(test: &TestStore) {
    let log = seed_tallies(&test.store).await;
    // The second event of t-2: the seventh of the log.
    let failing = of_tally(&log, "t-2")[1];
    assert_eq!(log[6].1, failing);
    let by_tally = Arc::new(ByTally {
        fail_once: Mutex::new(Some(failing)),
        ..ByTally::default()
    });
    let runner = SubscriberRunner::new(test.store.clone(), by_tally.clone());
    let first = runner.step().await.expect("step");
    assert_eq!((first.handled, first.failed), (6, true));
    assert_eq!(lag(&test.store).await, 14, "the checkpoint stops before it");
    drain(&runner).await;
    assert_eq!(lag(&test.store).await, 0);
    let seen = by_tally.seen.lock().expect("lock").clone();
    let mut expected = of_tally(&log, "t-2");
    expected.insert(1, failing);
    assert_eq!(
        of_tally(&seen, "t-2"),
        expected,
        "t-2 stops at it, then goes on"
    );
    for tally in ["t-0", "t-1", "t-3"] {
        assert_eq!(
            of_tally(&seen, tally),
            of_tally(&log, tally),
            "{tally} once each"
        );
    }
}

/// Acts only on the events of the tallies it names; records what it handled.
struct Picky {
    tallies: Vec<String>,
    seen: Mutex<Vec<Uuid>>,
}

#[async_trait::async_trait]
impl Subscriber for Picky {
    fn name(&self) -> &'static str {
        "test_picky"
    }

    fn acts_on(&self, event: &StoredEvent) -> bool {
        self.tallies.contains(&event.aggregate_id)
    }

    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        self.seen.lock().expect("lock").push(event.event_id);
        Ok(())
    }
}

async fn events_passed_over_move_the_checkpoint_and_are_not_handled(test: &TestStore) {
    let log = seed(&test.store, 10).await;
    let picky = Arc::new(Picky {
        tallies: vec!["t-3".into(), "t-7".into()],
        seen: Mutex::default(),
    });
    let runner = SubscriberRunner::new(test.store.clone(), picky.clone());
    drain(&runner).await;
    assert_eq!(*picky.seen.lock().expect("lock"), [log[3], log[7]]);
    // The checkpoint stands past the last event, passed over as it was: a new runner
    // has nothing left to do.
    let again = SubscriberRunner::new(test.reopen().await, picky.clone());
    let progress = again.step().await.expect("step");
    assert_eq!((progress.handled, progress.failed), (0, false));
    assert_eq!(picky.seen.lock().expect("lock").len(), 2);
}

/// The stored checkpoint of `name` and how many events it counts; the start and 0
/// before its first write.
async fn stored_checkpoint(store: &Store, name: &str) -> (LogCursor, i64) {
    const SQL: &str = "SELECT events_applied FROM projection_checkpoints WHERE name = $1";
    let counted: Option<i64> = match store.database() {
        shopagent_commands::Database::Postgres(pool) => {
            sqlx::query_scalar(SQL)
                .bind(name)
                .fetch_optional(pool)
                .await
        }
        shopagent_commands::Database::Sqlite(pool) => {
            sqlx::query_scalar(SQL)
                .bind(name)
                .fetch_optional(pool)
                .await
        }
    }
    .expect("checkpoint");
    let cursor = shopagent_commands::subscriber::checkpoint(store.database(), name)
        .await
        .expect("checkpoint");
    (cursor, counted.unwrap_or(0))
}

async fn a_batch_with_nothing_to_act_on_is_written_when_the_reader_next_finds_nothing(
    test: &TestStore,
) {
    seed(&test.store, 10).await;
    let log = readable_log(&test.store, 10).await;
    let picky = Arc::new(Picky {
        tallies: vec!["t-none".into()],
        seen: Mutex::default(),
    });
    let runner = SubscriberRunner::new(test.store.clone(), picky.clone());
    let passed = runner.step().await.expect("step");
    assert_eq!((passed.handled, passed.failed), (10, false));
    assert_eq!(
        stored_checkpoint(&test.store, "test_picky").await,
        (LogCursor::START, 0),
        "passed over without a write"
    );
    let idle = runner.step().await.expect("step");
    assert_eq!((idle.handled, idle.failed), (0, false));
    assert_eq!(
        stored_checkpoint(&test.store, "test_picky").await,
        (log[9].cursor, 10),
        "written once nothing new came"
    );
}

async fn events_passed_over_in_earlier_batches_are_written_with_the_next_event_acted_on(
    test: &TestStore,
) {
    seed(&test.store, 10).await;
    let log = readable_log(&test.store, 10).await;
    let picky = Arc::new(Picky {
        tallies: vec!["t-7".into()],
        seen: Mutex::default(),
    });
    let runner = SubscriberRunner::new(test.store.clone(), picky.clone()).with_batch_size(5);
    runner.step().await.expect("step");
    assert_eq!(
        stored_checkpoint(&test.store, "test_picky").await,
        (LogCursor::START, 0)
    );
    let second = runner.step().await.expect("step");
    assert_eq!((second.handled, second.failed), (5, false));
    assert_eq!(*picky.seen.lock().expect("lock"), [log[7].event_id]);
    assert_eq!(
        stored_checkpoint(&test.store, "test_picky").await,
        (log[9].cursor, 10),
        "every event counted once, the first five with the batch after them"
    );
}

async fn every_event_is_handled_once_in_log_order(test: &TestStore) {
    let log = seed(&test.store, 30).await;
    let recorder = Arc::new(Recorder::default());
    let runner = SubscriberRunner::new(test.store.clone(), recorder.clone()).with_batch_size(7);
    drain(&runner).await;
    assert_eq!(recorder.seen(), log);
    assert_eq!(lag(&test.store).await, 0);
}

async fn a_failed_event_is_retried_and_nothing_after_it_is_skipped(test: &TestStore) {
    let log = seed(&test.store, 20).await;
    let recorder = Arc::new(Recorder {
        fail_once_at: Mutex::new(Some(10)),
        ..Recorder::default()
    });
    let runner = SubscriberRunner::new(test.store.clone(), recorder.clone());
    let first = runner.step().await.expect("step");
    assert_eq!((first.handled, first.failed), (9, true));
    assert_eq!(lag(&test.store).await, 11);
    drain(&runner).await;
    let mut expected = log[..10].to_vec();
    expected.extend_from_slice(&log[9..]);
    assert_eq!(
        recorder.seen(),
        expected,
        "the 10th event twice, every other once, in order"
    );
}

async fn a_crash_after_the_side_effect_repeats_the_event_but_loses_none(test: &TestStore) {
    let log = seed(&test.store, 12).await;
    let recorder = Arc::new(Recorder {
        hang_once_at: Mutex::new(Some(5)),
        ..Recorder::default()
    });
    let runner = SubscriberRunner::new(test.store.clone(), recorder.clone());
    let task = tokio::spawn(runner.run(CancellationToken::new()));
    tokio::time::timeout(Duration::from_secs(30), recorder.hanging.notified())
        .await
        .expect("reaches the 5th event");
    task.abort();
    let _ = task.await;

    let restarted = SubscriberRunner::new(test.reopen().await, recorder.clone());
    drain(&restarted).await;
    let mut expected = log[..5].to_vec();
    expected.extend_from_slice(&log[4..]);
    assert_eq!(recorder.seen(), expected, "duplicates only, never a gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_a_subscriber_on_one_instance_at_a_time() {
    let test = TestStore::postgres().await;
    let log = seed(&test.store, 10).await;
    let recorder = Arc::new(Recorder::default());
    let (first_stop, second_stop) = (CancellationToken::new(), CancellationToken::new());
    let first = tokio::spawn(
        SubscriberRunner::new(test.store.clone(), recorder.clone()).run(first_stop.clone()),
    );
    let other_instance = test.reopen().await;
    let second = tokio::spawn(
        SubscriberRunner::new(other_instance.clone(), recorder.clone()).run(second_stop.clone()),
    );

    let wait_for = |count: usize| {
        let recorder = recorder.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while recorder.seen().len() < count && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recorder.seen(),
        log,
        "both instances running, each event handled once"
    );

    // The active instance stops; the standby takes over and handles what comes next.
    first_stop.cancel();
    first.await.expect("first runner");
    append_amounts(&test.store, "tally", "after", 0, &[1, 2]).await;
    wait_for(12).await;
    // Read once the standby handled them: on PostgreSQL an event becomes readable only
    // when every older transaction has ended, so a read right after the append may not
    // see it yet.
    let expected: Vec<Uuid> = test
        .store
        .read_log(LogCursor::START, u32::MAX)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(expected.len(), 12);
    assert_eq!(expected[..10], log[..]);
    assert_eq!(recorder.seen(), expected);
    second_stop.cancel();
    second.await.expect("second runner");
    other_instance.database().close().await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_work_held_exclusively_never_overlaps_across_instances() {
    use shopagent_commands::subscriber::exclusively;
    let test = TestStore::postgres().await;
    let other_instance = test.reopen().await;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let hold = |store: Store, spans: Arc<Mutex<Vec<(Instant, Instant)>>>| async move {
        for _ in 0..3 {
            exclusively(store.database(), "test.gate", async {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(30)).await;
                spans.lock().expect("spans").push((start, Instant::now()));
            })
            .await
            .expect("held");
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(hold(test.store.clone(), spans.clone())),
        tokio::spawn(hold(other_instance.clone(), spans.clone())),
    );
    a.expect("first");
    b.expect("second");
    let mut spans = spans.lock().expect("spans").clone();
    spans.sort();
    assert_eq!(spans.len(), 6);
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "one holder at a time: {pair:?}");
    }
}
