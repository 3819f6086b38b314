//! The event store suite, run against both backends: the embedded SQLite store and the
//! real PostgreSQL server.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Tally, TallyCommand, TallyError, TallyEvent, metadata};
use cqrs_es::persist::{PersistedEventRepository, PersistedEventStore, SerializedEvent};
use cqrs_es::{AggregateError, CqrsFramework};
use shopagent_commands::bridge::Stream;
use shopagent_commands::bus::SNAPSHOT_EVERY;
use shopagent_commands::store::SnapshotUpdate;
use shopagent_commands::{
    AppendError, ClaimOutcome, CommandBus, CommandError, LogCursor, RequestClaim, Store,
    with_request_claim,
};
use shopagent_domain::{EventMetadata, IdempotencyKey};
use uuid::Uuid;

shopagent_commands::on_both_backends!(
    appended_events_load_back_in_sequence,
    metadata_round_trips_through_the_log,
    conflicting_append_is_rejected_and_stores_nothing,
    concurrent_commands_on_one_aggregate_lose_no_update,
    conflict_retries_are_bounded,
    commands_on_one_aggregate_queue_within_a_process,
    rejected_command_appends_nothing,
    command_without_events_appends_nothing,
    retried_idempotency_key_returns_original_outcome_and_appends_nothing,
    idempotency_key_survives_a_restart_between_commit_and_reply,
    concurrent_duplicates_of_one_command_append_once,
    reused_idempotency_key_with_a_different_command_is_refused,
    idempotency_keys_are_scoped_per_tenant,
    global_log_orders_every_event_once,
    append_requires_tenant_principal_and_correlation,
    cqrs_es_framework_runs_on_the_store,
    snapshots_commit_with_their_events,
    a_long_stream_loads_from_its_snapshot_and_the_events_after_it,
    a_snapshot_of_another_form_is_ignored_and_replaced,
    a_command_on_a_state_another_process_moved_past_is_decided_on_the_stream,
    a_refusal_on_a_state_kept_in_memory_is_checked_against_the_stream,
    an_expected_version_is_checked_against_the_stream_not_the_state_kept,
    a_load_answers_what_the_stream_holds_after_another_process_appended,
    a_load_since_an_event_answers_that_event_s_state_or_a_later_one,
    a_settled_load_answers_a_kept_state_it_accepts_and_reads_the_stream_otherwise,
    a_bus_keeping_no_states_decides_on_the_stream_every_time,
    an_aggregate_expected_new_that_exists_is_decided_on_the_stream,
    a_request_s_first_append_holds_its_key_and_a_key_held_already_stores_nothing,
);

fn bus(store: &Store) -> CommandBus<Tally> {
    CommandBus::new(store.clone())
}

fn keyed(key: &str) -> EventMetadata {
    metadata().with_idempotency_key(IdempotencyKey::parse(key).expect("valid key"))
}

async fn stream_len(store: &Store, id: &str) -> usize {
    store
        .get_events::<Stream<Tally>>(id)
        .await
        .expect("load")
        .len()
}

/// Runs `copies` copies of `command` on `id` at once, each through its own bus as if
/// sent to different processes; returns each copy's result.
async fn concurrently(
    store: &Store,
    max_attempts: u32,
    copies: usize,
    id: &str,
    command: TallyCommand,
    metadata: impl Fn() -> EventMetadata,
) -> Vec<Result<shopagent_commands::CommandOutcome, CommandError<TallyError>>> {
    let tasks: Vec<_> = (0..copies)
        .map(|_| {
            let bus = bus(store).with_max_attempts(max_attempts);
            let (id, command, metadata) = (id.to_owned(), command.clone(), metadata());
            tokio::spawn(async move { bus.execute(&id, command, metadata).await })
        })
        .collect();
    let mut results = Vec::with_capacity(copies);
    for task in tasks {
        results.push(task.await.expect("command task"));
    }
    results
}

async fn open_tally(store: &Store) -> String {
    let id = Uuid::now_v7().to_string();
    bus(store)
        .execute(&id, TallyCommand::Open, metadata())
        .await
        .expect("open a tally");
    id
}

/// The whole log once it has settled. On PostgreSQL an event becomes readable when every
/// older transaction in the cluster has ended, so other tests' transactions can delay it
/// briefly.
async fn all_events(store: &Store) -> Vec<shopagent_commands::StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stored = store.count_after(LogCursor::START).await.expect("count");
        let events = store
            .read_log(LogCursor::START, 100_000)
            .await
            .expect("read the log");
        if events.len() as i64 == stored || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn appended_events_load_back_in_sequence(store: &Store) {
    let id = open_tally(store).await;
    let outcome = bus(store)
        .execute(&id, TallyCommand::AddTwice(5), metadata())
        .await
        .expect("add");
    assert_eq!(outcome.version, 3);
    assert_eq!(outcome.events_appended, 2);

    let events = store.get_events::<Stream<Tally>>(&id).await.expect("load");
    let sequences: Vec<usize> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["TallyOpened", "TallyAdded", "TallyAdded"]);
    assert_eq!(
        events[1].payload,
        serde_json::json!({"Added": {"amount": 5}})
    );
}

async fn metadata_round_trips_through_the_log(store: &Store) {
    let id = Uuid::now_v7().to_string();
    let cause = Uuid::now_v7();
    let mut sent = keyed("meta-1").caused_by(cause);
    sent.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    bus(store)
        .execute(&id, TallyCommand::Open, sent.clone())
        .await
        .expect("open");

    let events = all_events(store).await;
    assert_eq!(events.len(), 1);
    let stored = &events[0];
    assert_eq!(stored.metadata.tenant, sent.tenant);
    assert_eq!(stored.metadata.principal, sent.principal);
    assert_eq!(stored.metadata.correlation_id, sent.correlation_id);
    assert_eq!(stored.metadata.causation_id, Some(cause));
    assert_eq!(stored.metadata.idempotency_key, sent.idempotency_key);
    assert_eq!(stored.metadata.traceparent, sent.traceparent);
    assert!(
        stored.metadata.request_digest.is_some(),
        "keyed commands carry their digest"
    );
    assert_eq!(
        (stored.aggregate_type.as_str(), stored.aggregate_id.as_str()),
        ("tally", id.as_str())
    );
    assert_eq!(stored.event_version, "1");
    assert!(stored.position() > 0);
    let age = time::OffsetDateTime::now_utc() - stored.recorded_at;
    assert!(
        age.whole_minutes().abs() < 5,
        "recorded_at is the append time, got {}",
        stored.recorded_at
    );
}

fn raw_event(id: &str, sequence: usize, amount: i64) -> SerializedEvent {
    static METADATA: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(|| serde_json::to_value(metadata().to_map()).expect("serialize"));
    SerializedEvent {
        aggregate_id: id.to_owned(),
        sequence,
        aggregate_type: "tally".to_owned(),
        event_type: "TallyAdded".to_owned(),
        event_version: "1".to_owned(),
        payload: serde_json::to_value(TallyEvent::Added { amount }).expect("serialize"),
        metadata: METADATA.clone(),
    }
}

async fn conflicting_append_is_rejected_and_stores_nothing(store: &Store) {
    let id = open_tally(store).await;
    store
        .append(&[raw_event(&id, 2, 1)], None)
        .await
        .expect("first writer wins");

    // A second writer that also loaded version 1 tries sequences 2 and 3.
    let result = store
        .append(&[raw_event(&id, 2, 100), raw_event(&id, 3, 100)], None)
        .await;
    assert!(
        matches!(result, Err(AppendError::Conflict)),
        "got {result:?}"
    );

    let events = store.get_events::<Stream<Tally>>(&id).await.expect("load");
    assert_eq!(events.len(), 2, "the losing append stored nothing");
    assert_eq!(
        events[1].payload,
        serde_json::json!({"Added": {"amount": 1}})
    );
}

async fn concurrent_commands_on_one_aggregate_lose_no_update(store: &Store) {
    let id = open_tally(store).await;
    let results = concurrently(store, 100, 16, &id, TallyCommand::Add(1), metadata).await;
    let succeeded = results.len();
    for result in results {
        result.expect("every add succeeds within 100 attempts");
    }
    let events = store.get_events::<Stream<Tally>>(&id).await.expect("load");
    assert_eq!(events.len(), 1 + succeeded);
    let sequences: Vec<usize> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=1 + succeeded).collect::<Vec<_>>());
}

async fn conflict_retries_are_bounded(store: &Store) {
    let id = open_tally(store).await;
    // One attempt only, against many rivals: some commands must give up with Conflict,
    // and every one that gave up stored nothing.
    let results = concurrently(store, 1, 24, &id, TallyCommand::Add(1), metadata).await;
    let (mut ok, mut conflicts) = (0, 0);
    for result in results {
        match result {
            Ok(_) => ok += 1,
            Err(CommandError::Conflict { attempts: 1 }) => conflicts += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    let events = store.get_events::<Stream<Tally>>(&id).await.expect("load");
    assert_eq!(
        events.len(),
        1 + ok,
        "exactly the successful commands were stored"
    );
    assert_eq!(ok + conflicts, 24);
}

async fn commands_on_one_aggregate_queue_within_a_process(store: &Store) {
    let id = open_tally(store).await;
    // One bus, one attempt each: queued in process, none of them conflicts.
    let bus = Arc::new(bus(store).with_max_attempts(1));
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (bus, id) = (bus.clone(), id.clone());
            tokio::spawn(async move { bus.execute(&id, TallyCommand::Add(1), metadata()).await })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("task")
            .expect("no conflict within one process");
    }
    assert_eq!(stream_len(store, &id).await, 25);
}

async fn rejected_command_appends_nothing(store: &Store) {
    let id = Uuid::now_v7().to_string();
    let result = bus(store)
        .execute(&id, TallyCommand::Add(3), keyed("rejected-1"))
        .await;
    assert!(
        matches!(result, Err(CommandError::Rejected(TallyError::NotOpen))),
        "got {result:?}"
    );
    assert!(all_events(store).await.is_empty());
}

async fn command_without_events_appends_nothing(store: &Store) {
    let id = open_tally(store).await;
    let outcome = bus(store)
        .execute(&id, TallyCommand::Touch, metadata())
        .await
        .expect("touch");
    assert_eq!((outcome.version, outcome.events_appended), (1, 0));
    assert_eq!(all_events(store).await.len(), 1);
}

async fn retried_idempotency_key_returns_original_outcome_and_appends_nothing(store: &Store) {
    let id = open_tally(store).await;
    let first = bus(store)
        .execute(&id, TallyCommand::AddTwice(7), keyed("add-7"))
        .await
        .expect("first");
    assert!(!first.replayed);
    // Someone else moves the aggregate on in between.
    bus(store)
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("other");

    let retry = bus(store)
        .execute(&id, TallyCommand::AddTwice(7), keyed("add-7"))
        .await
        .expect("retry");
    assert!(retry.replayed);
    assert_eq!(
        (retry.version, retry.events_appended),
        (first.version, first.events_appended)
    );
    assert_eq!(stream_len(store, &id).await, 4);
}

async fn idempotency_key_survives_a_restart_between_commit_and_reply(store: &Store) {
    let id = open_tally(store).await;
    // The first attempt commits; its reply is lost (the process dies before answering).
    let lost_reply = bus(store)
        .execute(&id, TallyCommand::Add(9), keyed("crash-1"))
        .await
        .expect("first");
    drop(lost_reply);

    // A new process (fresh bus, no memory of the first) receives the client's retry.
    let restarted = bus(store);
    let retry = restarted
        .execute(&id, TallyCommand::Add(9), keyed("crash-1"))
        .await
        .expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.version, 2);
    assert_eq!(stream_len(store, &id).await, 2);
}

async fn concurrent_duplicates_of_one_command_append_once(store: &Store) {
    let id = open_tally(store).await;
    let outcomes: Vec<_> = concurrently(store, 5, 8, &id, TallyCommand::Add(2), || keyed("dup-1"))
        .await
        .into_iter()
        .map(|result| result.expect("every copy succeeds"))
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| !o.replayed).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o.version == 2));
    assert_eq!(stream_len(store, &id).await, 2);
}

async fn reused_idempotency_key_with_a_different_command_is_refused(store: &Store) {
    let id = open_tally(store).await;
    bus(store)
        .execute(&id, TallyCommand::Add(1), keyed("k-1"))
        .await
        .expect("first");
    let other_amount = bus(store)
        .execute(&id, TallyCommand::Add(2), keyed("k-1"))
        .await;
    assert!(
        matches!(other_amount, Err(CommandError::IdempotencyKeyReused)),
        "got {other_amount:?}"
    );
    let other_aggregate = bus(store)
        .execute("another", TallyCommand::Open, keyed("k-1"))
        .await;
    assert!(
        matches!(other_aggregate, Err(CommandError::IdempotencyKeyReused)),
        "got {other_aggregate:?}"
    );
    assert_eq!(all_events(store).await.len(), 2);
}

async fn idempotency_keys_are_scoped_per_tenant(store: &Store) {
    let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let key = IdempotencyKey::parse("same-key").expect("key");
    let tenant_a = EventMetadata::new("tenant-a", "u").with_idempotency_key(key.clone());
    let tenant_b = EventMetadata::new("tenant-b", "u").with_idempotency_key(key);
    let first = bus(store)
        .execute(&a, TallyCommand::Open, tenant_a)
        .await
        .expect("a");
    let second = bus(store)
        .execute(&b, TallyCommand::Open, tenant_b)
        .await
        .expect("b");
    assert!(!first.replayed && !second.replayed);
    assert_eq!(all_events(store).await.len(), 2);
}

async fn global_log_orders_every_event_once(store: &Store) {
    let bus = Arc::new(bus(store));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let id = Uuid::now_v7().to_string();
                bus.execute(&id, TallyCommand::Open, metadata())
                    .await
                    .expect("open");
                for _ in 0..10 {
                    bus.execute(&id, TallyCommand::AddTwice(1), metadata())
                        .await
                        .expect("add");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let events = all_events(store).await;
    assert_eq!(events.len(), 8 * 21);
    assert!(
        events.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "strictly increasing cursors"
    );
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    let positions: HashSet<i64> = events.iter().map(|e| e.position()).collect();
    assert_eq!(positions.len(), events.len(), "positions are unique");
    assert_eq!(
        store.head_position().await.expect("head"),
        *positions.iter().max().expect("max")
    );
    // Within one aggregate, log order is sequence order.
    let mut last_sequence = std::collections::HashMap::new();
    for event in &events {
        let previous = last_sequence
            .insert(event.aggregate_id.clone(), event.sequence)
            .unwrap_or(0);
        assert_eq!(event.sequence, previous + 1);
    }
    // Paging with the cursor yields the same log.
    let mut paged: Vec<shopagent_commands::StoredEvent> = Vec::new();
    let mut cursor = LogCursor::START;
    loop {
        let page = store.read_log(cursor, 7).await.expect("page");
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        paged.extend(page);
    }
    assert_eq!(paged, events);
    assert_eq!(
        store.count_after(LogCursor::START).await.expect("count"),
        events.len() as i64
    );
    assert_eq!(store.count_after(cursor).await.expect("count"), 0);
}

async fn append_requires_tenant_principal_and_correlation(store: &Store) {
    let mut event = raw_event("x", 1, 1);
    event.metadata = serde_json::json!({"tenant": "t"});
    let result = store.append(&[event], None).await;
    assert!(
        matches!(result, Err(AppendError::Invalid(_))),
        "got {result:?}"
    );
    let gap = store
        .append(&[raw_event("x", 1, 1), raw_event("x", 3, 1)], None)
        .await;
    assert!(matches!(gap, Err(AppendError::Invalid(_))), "got {gap:?}");
    assert!(all_events(store).await.is_empty());
}

async fn cqrs_es_framework_runs_on_the_store(store: &Store) {
    let cqrs = CqrsFramework::new(
        PersistedEventStore::<Store, Stream<Tally>>::new_event_store(store.clone()),
        vec![],
        (),
    );
    let id = "framework-1";
    cqrs.execute_with_metadata(id, TallyCommand::Open, metadata().to_map())
        .await
        .expect("open");
    cqrs.execute_with_metadata(id, TallyCommand::Add(4), metadata().to_map())
        .await
        .expect("add");
    let rejected = cqrs
        .execute_with_metadata(id, TallyCommand::Open, metadata().to_map())
        .await;
    assert!(matches!(
        rejected,
        Err(AggregateError::UserError(TallyError::AlreadyOpen))
    ));
    // Without the required metadata the store refuses to record anything.
    let bare = cqrs.execute(id, TallyCommand::Add(1)).await;
    assert!(bare.is_err());
    assert_eq!(stream_len(store, id).await, 2);
}

async fn snapshots_commit_with_their_events(store: &Store) {
    let snapshotting = || {
        CqrsFramework::new(
            PersistedEventStore::<Store, Stream<Tally>>::new_snapshot_store(store.clone(), 2),
            vec![],
            (),
        )
    };
    let id = "snap-1";
    let cqrs = snapshotting();
    cqrs.execute_with_metadata(id, TallyCommand::Open, metadata().to_map())
        .await
        .expect("open");
    for _ in 0..5 {
        cqrs.execute_with_metadata(id, TallyCommand::Add(10), metadata().to_map())
            .await
            .expect("add");
    }
    let snapshot = store
        .get_snapshot::<Stream<Tally>>(id)
        .await
        .expect("snapshot")
        .expect("exists");
    assert_eq!(snapshot.current_sequence, 6);
    assert_eq!(
        snapshot.aggregate,
        serde_json::json!({"opened": true, "total": 50})
    );
    let loaded = cqrs_es::EventStore::load_aggregate(
        &PersistedEventStore::<Store, Stream<Tally>>::new_snapshot_store(store.clone(), 2),
        id,
    )
    .await
    .expect("load");
    assert_eq!(loaded.aggregate.0.total, 50);
    assert_eq!(loaded.current_sequence, 6);
}

/// `count` commands adding 1, one after the other.
async fn add_ones(bus: &CommandBus<Tally>, id: &str, count: i64) {
    for _ in 0..count {
        bus.execute(id, TallyCommand::Add(1), metadata())
            .await
            .expect("add");
    }
}

async fn stored_snapshot(store: &Store, id: &str) -> cqrs_es::persist::SerializedSnapshot {
    store
        .get_snapshot::<Stream<Tally>>(id)
        .await
        .expect("read")
        .expect("a snapshot")
}

fn snapshot_of(version: u32, total: i64, current_snapshot: i64) -> SnapshotUpdate {
    SnapshotUpdate {
        payload: serde_json::json!({"version": version, "state": {"opened": true, "total": total}}),
        current_snapshot,
    }
}

async fn a_long_stream_loads_from_its_snapshot_and_the_events_after_it(store: &Store) {
    let id = open_tally(store).await;
    let bus = bus(store);
    let adds = 2 * SNAPSHOT_EVERY + 5;
    add_ones(&bus, &id, adds).await;
    let snapshot = stored_snapshot(store, &id).await;
    // One each time the stream is SNAPSHOT_EVERY events past the last one.
    assert_eq!(snapshot.current_sequence as i64, 2 * SNAPSHOT_EVERY);
    assert_eq!(snapshot.current_snapshot, 2);
    assert_eq!(
        snapshot.aggregate,
        serde_json::json!({"version": 1, "state": {"opened": true, "total": 2 * SNAPSHOT_EVERY - 1}})
    );
    let (tally, version) = bus.load(&id).await.expect("load");
    assert_eq!((tally.total, version), (adds, adds + 1));

    // A load starts from the snapshot, not from the first event: a snapshot that says
    // otherwise than the events shows through.
    let next = adds + 2;
    store
        .append(
            &[raw_event(&id, next as usize, 1)],
            Some(snapshot_of(1, 1_000_000, 3)),
        )
        .await
        .expect("append with a snapshot");
    bus.execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add");
    let (tally, version) = bus.load(&id).await.expect("load");
    assert_eq!((tally.total, version), (1_000_001, next + 1));
}

async fn a_snapshot_of_another_form_is_ignored_and_replaced(store: &Store) {
    let id = open_tally(store).await;
    store
        .append(&[raw_event(&id, 2, 5)], Some(snapshot_of(0, 1_000_000, 1)))
        .await
        .expect("append with a snapshot of an older form");
    let bus = bus(store);
    let (tally, version) = bus.load(&id).await.expect("load");
    assert_eq!(
        (tally.total, version),
        (5, 2),
        "the events are replayed in full"
    );

    add_ones(&bus, &id, SNAPSHOT_EVERY - 2).await;
    let snapshot = stored_snapshot(store, &id).await;
    assert_eq!(snapshot.current_sequence as i64, SNAPSHOT_EVERY);
    assert_eq!(snapshot.current_snapshot, 2);
    assert_eq!(
        snapshot.aggregate,
        serde_json::json!({"version": 1, "state": {"opened": true, "total": 5 + SNAPSHOT_EVERY - 2}})
    );
}

/// Appends wait for the disk; the writes the log can make again do not. A commit on the
/// derived pool is visible at once to the main one.
#[tokio::test]
async fn postgres_appends_commit_durably_and_derived_writes_without_waiting_for_the_disk() {
    let test = shopagent_commands::test_support::TestStore::postgres().await;
    let setting = |db: &shopagent_commands::Database| {
        let shopagent_commands::Database::Postgres(pool) = db.clone() else {
            panic!("a PostgreSQL store");
        };
        async move {
            sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
                .fetch_one(&pool)
                .await
                .expect("show")
        }
    };
    assert_eq!(setting(test.store.database()).await, "on");
    assert_eq!(setting(test.store.derived()).await, "off");

    let shopagent_commands::Database::Postgres(derived) = test.store.derived().clone() else {
        panic!("a PostgreSQL store");
    };
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, updated_at) VALUES ('derived_probe', 'now')",
    )
    .execute(&derived)
    .await
    .expect("insert");
    let shopagent_commands::Database::Postgres(main) = test.store.database().clone() else {
        panic!("a PostgreSQL store");
    };
    let seen: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_checkpoints WHERE name = 'derived_probe'",
    )
    .fetch_one(&main)
    .await
    .expect("select");
    assert_eq!(seen, 1);
}

/// Two buses on one store: two processes, each keeping the states it made.
fn two_processes(store: &Store) -> (CommandBus<Tally>, CommandBus<Tally>) {
    (bus(store), bus(store))
}

async fn a_command_on_a_state_another_process_moved_past_is_decided_on_the_stream(store: &Store) {
    let (first, second) = two_processes(store);
    let id = Uuid::now_v7().to_string();
    first
        .execute(&id, TallyCommand::Open, metadata())
        .await
        .expect("open");
    second
        .execute(&id, TallyCommand::Add(10), metadata())
        .await
        .expect("add in the other process");
    // The first process still keeps the tally at version 1, total 0.
    let (tally, version) = first
        .execute_and_load(&id, TallyCommand::Add(1), metadata(), None)
        .await
        .expect("add");
    assert_eq!((tally.total, version), (11, 3));
    assert_eq!(stream_len(store, &id).await, 3);
}

async fn a_refusal_on_a_state_kept_in_memory_is_checked_against_the_stream(store: &Store) {
    let (first, second) = two_processes(store);
    let id = Uuid::now_v7().to_string();
    // The first process keeps the tally as not open yet.
    let (tally, _) = first.load(&id).await.expect("load");
    assert!(!tally.opened);
    second
        .execute(&id, TallyCommand::Open, metadata())
        .await
        .expect("open in the other process");
    let outcome = first
        .execute(&id, TallyCommand::Add(2), metadata())
        .await
        .expect("not refused as not open: the stream says it is");
    assert_eq!(outcome.version, 2);
    // And the other way round: allowed on the state kept (total 2), refused on the
    // stream's (total 5).
    second
        .execute(&id, TallyCommand::Add(3), metadata())
        .await
        .expect("add in the other process");
    let refused = first
        .execute_and_load_if(&id, TallyCommand::Add(1), metadata(), None, |tally| {
            if tally.total >= 5 {
                Err("full")
            } else {
                Ok(())
            }
        })
        .await
        .expect("decided");
    assert_eq!(refused.err(), Some("full"));
    assert_eq!(stream_len(store, &id).await, 3);
}

async fn an_expected_version_is_checked_against_the_stream_not_the_state_kept(store: &Store) {
    let (first, second) = two_processes(store);
    let id = open_tally(store).await;
    first
        .load(&id)
        .await
        .expect("the first process keeps version 1");
    second
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add in the other process");
    // A client that read version 2 (from the other process) may change it here.
    let outcome = first
        .execute_at_version(&id, TallyCommand::Add(1), metadata(), Some(2))
        .await
        .expect("version 2 is the stream's");
    assert_eq!(outcome.version, 3);
    let stale = first
        .execute_at_version(&id, TallyCommand::Add(1), metadata(), Some(2))
        .await;
    assert!(
        matches!(
            stale,
            Err(CommandError::VersionMismatch {
                expected: 2,
                actual: 3
            })
        ),
        "{stale:?}"
    );
}

async fn a_load_answers_what_the_stream_holds_after_another_process_appended(store: &Store) {
    let (first, second) = two_processes(store);
    let id = open_tally(store).await;
    first
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add");
    assert_eq!(first.load(&id).await.expect("load").0.total, 1);
    second
        .execute(&id, TallyCommand::AddTwice(5), metadata())
        .await
        .expect("add in the other process");
    let (tally, version) = first.load(&id).await.expect("load");
    assert_eq!((tally.total, version), (11, 4));
}

async fn a_load_since_an_event_answers_that_event_s_state_or_a_later_one(store: &Store) {
    let (first, second) = two_processes(store);
    let id = open_tally(store).await;
    first
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add: the first process keeps version 2");
    second
        .execute(&id, TallyCommand::Add(10), metadata())
        .await
        .expect("add in the other process: version 3");
    // A reader acting on the event at 3 gets no less than that event's state.
    let (tally, version) = first.load_since(&id, 3).await.expect("load since 3");
    assert_eq!((tally.total, version), (11, 3));
    // Acting on the event at 2, the state of 2 or of any later event will do.
    let (tally, version) = first.load_since(&id, 2).await.expect("load since 2");
    let total_at = |version| if version == 2 { 1 } else { 11 };
    assert!(version >= 2, "{version}");
    assert_eq!(tally.total, total_at(version));
}

async fn a_settled_load_answers_a_kept_state_it_accepts_and_reads_the_stream_otherwise(
    store: &Store,
) {
    let (first, second) = two_processes(store);
    let id = open_tally(store).await;
    first
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add: the first process keeps version 2, open");
    second
        .execute(&id, TallyCommand::Add(10), metadata())
        .await
        .expect("add in the other process: version 3");
    // Whether the tally is open cannot change once it is: the kept state answers.
    let (tally, version) = first
        .load_settled(&id, |tally| tally.opened)
        .await
        .expect("settled load");
    assert_eq!((tally.opened, tally.total, version), (true, 1, 2));
    // A fact the kept state does not settle is read from the stream.
    let (tally, version) = first
        .load_settled(&id, |tally| tally.total >= 5)
        .await
        .expect("load");
    assert_eq!((tally.total, version), (11, 3));
    // Nothing kept: the stream is read.
    let (tally, version) = bus(store)
        .load_settled(&id, |_| true)
        .await
        .expect("load in a third process");
    assert_eq!((tally.total, version), (11, 3));
}

async fn a_bus_keeping_no_states_decides_on_the_stream_every_time(store: &Store) {
    let first = bus(store).with_recent_states(0);
    let id = open_tally(store).await;
    first
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add");
    bus(store)
        .execute(&id, TallyCommand::Add(1), metadata())
        .await
        .expect("add in the other process");
    // One attempt only: with nothing kept it never meets a stale state.
    let (tally, version) = first
        .with_max_attempts(1)
        .execute_and_load(&id, TallyCommand::Add(1), metadata(), None)
        .await
        .expect("add");
    assert_eq!((tally.total, version), (3, 4));
}

async fn an_aggregate_expected_new_that_exists_is_decided_on_the_stream(store: &Store) {
    let (first, second) = two_processes(store);
    let new = Uuid::now_v7().to_string();
    first.expect_new(&new);
    let outcome = first
        .execute(&new, TallyCommand::Open, metadata())
        .await
        .expect("open a new tally");
    assert_eq!(outcome.version, 1);

    // Opened by the other process: not new after all.
    let existing = Uuid::now_v7().to_string();
    second
        .execute(&existing, TallyCommand::Open, metadata())
        .await
        .expect("open in the other process");
    first.expect_new(&existing);
    let again = first
        .execute(&existing, TallyCommand::Open, metadata())
        .await;
    assert!(
        matches!(again, Err(CommandError::Rejected(TallyError::AlreadyOpen))),
        "{again:?}"
    );
    assert_eq!(stream_len(store, &existing).await, 1);
}

fn request_claim(key: &str, hash: &str) -> RequestClaim {
    RequestClaim {
        tenant: metadata().tenant,
        key: key.to_owned(),
        request_hash: hash.to_owned(),
        lease_until_ms: 2_000,
        created_at_ms: 1_000,
        request: "{}".to_owned(),
        request_body: bytes::Bytes::from_static(b"the request"),
    }
}

/// (request hash, state, request body) of the key's row, if it has one.
async fn key_row(store: &Store, key: &str) -> Option<(String, String, Option<Vec<u8>>)> {
    const SQL: &str = "SELECT request_hash, state, request_body FROM http_idempotency
         WHERE tenant = 'tenant-a' AND idempotency_key = $1";
    shopagent_commands::on_pool!(store.database(), pool => sqlx::query_as(SQL).bind(key).fetch_optional(pool).await)
        .expect("read the key's row")
}

/// A request's claim on its key is written by its first append, in the same commit;
/// a request that finds the key held (by another request, or answered) stores nothing
/// at all, and neither does any later append of its.
async fn a_request_s_first_append_holds_its_key_and_a_key_held_already_stores_nothing(
    store: &Store,
) {
    let id = open_tally(store).await;
    let bus = bus(store);
    let ((first, second), claim) = with_request_claim(request_claim("req-1", "a"), async {
        let first = bus.execute(&id, TallyCommand::Add(1), keyed("req-1")).await;
        let second = bus
            .execute(&id, TallyCommand::Add(2), keyed("req-1/second"))
            .await;
        (first, second)
    })
    .await;
    assert_eq!(claim, ClaimOutcome::Written);
    assert_eq!(first.expect("first command").version, 2);
    assert_eq!(second.expect("second command").version, 3);
    assert_eq!(
        key_row(store, "req-1").await,
        Some((
            "a".into(),
            "in_flight".into(),
            Some(b"the request".to_vec())
        ))
    );

    // Another request under the same key: nothing of it is stored, not even a
    // command under a key of its own.
    let ((refused, after), claim) = with_request_claim(request_claim("req-1", "b"), async {
        let refused = bus.execute(&id, TallyCommand::Add(5), keyed("other")).await;
        let after = bus.execute(&id, TallyCommand::Add(6), metadata()).await;
        (refused, after)
    })
    .await;
    assert_eq!(claim, ClaimOutcome::Refused);
    assert!(
        matches!(refused, Err(CommandError::RequestKeyTaken)),
        "{refused:?}"
    );
    assert!(
        matches!(after, Err(CommandError::RequestKeyTaken)),
        "{after:?}"
    );
    assert_eq!(stream_len(store, &id).await, 3);
    assert_eq!(
        key_row(store, "req-1").await.map(|row| row.0),
        Some("a".into())
    );
    assert_eq!(
        store
            .recorded_outcome(&metadata().tenant, "other")
            .await
            .expect("read"),
        None
    );

    // A request that appends nothing leaves its claim unwritten.
    let (touched, claim) = with_request_claim(
        request_claim("req-2", "c"),
        bus.execute(&id, TallyCommand::Touch, keyed("req-2")),
    )
    .await;
    assert_eq!(claim, ClaimOutcome::Unused);
    assert_eq!(touched.expect("touch").events_appended, 0);
    assert_eq!(key_row(store, "req-2").await, None);
}
