//! Units: commands on several aggregates committed in one transaction, on both backends.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Tally, TallyCommand, TallyError, metadata};
use cqrs_es::persist::PersistedEventRepository;
use shopagent_commands::bridge::Stream;
use shopagent_commands::{CommandBus, CommandError, Store, Unit, UnitError};
use shopagent_domain::{EventMetadata, IdempotencyKey};
use uuid::Uuid;

shopagent_commands::on_both_backends!(
    commands_on_several_aggregates_commit_together,
    a_command_in_a_unit_is_decided_on_what_the_unit_made_before_it,
    a_unit_that_fails_stores_nothing,
    a_unit_whose_aggregate_changed_concurrently_is_decided_again_on_the_streams,
    a_unit_run_again_with_its_keys_appends_nothing_and_answers_the_same,
    a_refusal_in_a_unit_on_a_stale_kept_state_is_decided_on_the_stream,
    a_refusal_resting_on_a_stale_kept_state_decides_the_whole_unit_again,
    a_unit_that_keeps_conflicting_gives_up,
    units_of_one_process_on_one_aggregate_queue_and_all_commit,
    units_naming_aggregates_in_opposite_orders_never_wait_for_each_other_and_all_commit,
    two_units_that_keep_meeting_in_opposite_orders_both_commit,
);

/// What a plan fails with: a command's error or the unit's.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Command(#[from] CommandError<TallyError>),
    #[error(transparent)]
    Unit(#[from] UnitError),
}

/// Runs `plan` in the attempts of a unit until one commits, as a caller does.
async fn run<T>(
    store: &Store,
    mut plan: impl AsyncFnMut(&mut Unit) -> Result<T, Failed>,
) -> Result<T, Failed> {
    let mut attempts = Unit::attempts(store);
    loop {
        let unit = attempts.next().await?;
        let planned = plan(unit).await;
        if let Some(answer) = attempts.commit(planned).await? {
            return Ok(answer);
        }
    }
}

fn bus(store: &Store) -> Arc<CommandBus<Tally>> {
    Arc::new(CommandBus::new(store.clone()))
}

fn keyed(key: &str) -> EventMetadata {
    metadata().with_idempotency_key(IdempotencyKey::parse(key).expect("valid key"))
}

async fn open_tally(bus: &CommandBus<Tally>) -> String {
    let id = Uuid::now_v7().to_string();
    bus.execute(&id, TallyCommand::Open, metadata())
        .await
        .expect("open a tally");
    id
}

/// The tally as stored (not as any bus kept it), and its version.
async fn stored(store: &Store, id: &str) -> (i64, usize) {
    let events = store
        .get_events::<Stream<Tally>>(id)
        .await
        .expect("load the stream");
    let total = events
        .iter()
        .filter_map(|event| event.payload.get("Added")?.get("amount")?.as_i64())
        .sum();
    (total, events.len())
}

async fn commands_on_several_aggregates_commit_together(store: &Store) {
    let tallies = bus(store);
    let (a, b) = (open_tally(&tallies).await, open_tally(&tallies).await);
    let answers = run(store, async |unit: &mut Unit| {
        let first = unit
            .execute_and_load(&tallies, &a, TallyCommand::Add(1), metadata(), None)
            .await?;
        let second = unit
            .execute_and_load(&tallies, &b, TallyCommand::AddTwice(2), metadata(), None)
            .await?;
        Ok::<_, Failed>((first.0.total, first.1, second.0.total, second.1))
    })
    .await
    .expect("the unit commits");
    assert_eq!(answers, (1, 2, 4, 3));
    assert_eq!(stored(store, &a).await, (1, 2));
    assert_eq!(stored(store, &b).await, (4, 3));
    // The buses keep what the unit made.
    let (tally, version) = tallies.load(&b).await.expect("load");
    assert_eq!((tally.total, version), (4, 3));
}

async fn a_command_in_a_unit_is_decided_on_what_the_unit_made_before_it(store: &Store) {
    let tallies = bus(store);
    let a = open_tally(&tallies).await;
    let refused = run(store, async |unit: &mut Unit| {
        unit.execute_and_load(&tallies, &a, TallyCommand::Add(3), keyed("u/1"), None)
            .await?;
        let full = unit
            .execute_and_load(
                &tallies,
                &a,
                TallyCommand::AddUpTo {
                    amount: 1,
                    limit: 3,
                },
                keyed("u/2"),
                None,
            )
            .await;
        let (tally, version) = unit
            .execute_and_load(&tallies, &a, TallyCommand::Add(4), keyed("u/3"), None)
            .await?;
        Ok::<_, Failed>((full.err(), tally.total, version))
    })
    .await
    .expect("the unit commits");
    assert!(
        matches!(refused.0, Some(CommandError::Rejected(TallyError::Full))),
        "{:?}",
        refused.0
    );
    assert_eq!((refused.1, refused.2), (7, 3));
    assert_eq!(stored(store, &a).await, (7, 3));
    // Each command that appended recorded its key: running them again adds nothing.
    let outcome = tallies
        .execute(&a, TallyCommand::Add(4), keyed("u/3"))
        .await
        .expect("replayed");
    assert!(outcome.replayed);
}

async fn a_unit_that_fails_stores_nothing(store: &Store) {
    let tallies = bus(store);
    let (a, b) = (open_tally(&tallies).await, open_tally(&tallies).await);
    let never_opened = Uuid::now_v7().to_string();
    let failed = run(store, async |unit: &mut Unit| {
        unit.execute_and_load(&tallies, &a, TallyCommand::Add(1), metadata(), None)
            .await?;
        unit.execute_and_load(&tallies, &b, TallyCommand::Add(1), metadata(), None)
            .await?;
        unit.execute_and_load(
            &tallies,
            &never_opened,
            TallyCommand::Add(1),
            metadata(),
            None,
        )
        .await?;
        Ok::<_, Failed>(())
    })
    .await;
    assert!(
        matches!(
            failed,
            Err(Failed::Command(CommandError::Rejected(TallyError::NotOpen)))
        ),
        "{failed:?}"
    );
    assert_eq!(stored(store, &a).await, (0, 1));
    assert_eq!(stored(store, &b).await, (0, 1));
    assert_eq!(stored(store, &never_opened).await, (0, 0));
    // Nor do the buses keep what the unit made and did not commit.
    assert_eq!(tallies.load(&a).await.expect("load").0.total, 0);
}

async fn a_unit_whose_aggregate_changed_concurrently_is_decided_again_on_the_streams(
    store: &Store,
) {
    let (tallies, other_process) = (bus(store), bus(store));
    let (a, b) = (open_tally(&tallies).await, open_tally(&tallies).await);
    let attempts = AtomicU32::new(0);
    let answer = run(store, async |unit: &mut Unit| {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        unit.execute_and_load(&tallies, &a, TallyCommand::Add(1), metadata(), None)
            .await?;
        let (tally, _) = unit
            .execute_and_load(&tallies, &b, TallyCommand::Add(2), metadata(), None)
            .await?;
        if attempt == 1 {
            // Another process appends to b after the unit decided on it.
            other_process
                .execute(&b, TallyCommand::Add(10), metadata())
                .await
                .expect("add in the other process");
        }
        Ok::<_, Failed>(tally.total)
    })
    .await
    .expect("the unit commits on its second attempt");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(answer, 12, "the answer is the attempt that committed");
    assert_eq!(stored(store, &a).await, (1, 2));
    assert_eq!(stored(store, &b).await, (12, 3));
}

async fn a_unit_run_again_with_its_keys_appends_nothing_and_answers_the_same(store: &Store) {
    let tallies = bus(store);
    let (a, b) = (open_tally(&tallies).await, open_tally(&tallies).await);
    let plan = async |unit: &mut Unit| {
        let (first, _) = unit
            .execute_and_load(&tallies, &a, TallyCommand::Add(1), keyed("k/a"), None)
            .await?;
        let (second, version) = unit
            .execute_and_load(&tallies, &b, TallyCommand::Add(2), keyed("k/b"), None)
            .await?;
        Ok::<_, Failed>((first.total, second.total, version))
    };
    let first = run(store, plan).await.expect("the unit commits");
    // The same unit again, as a retry from a process that kept nothing.
    let retried = run(store, async |unit: &mut Unit| {
        let fresh = bus(store);
        let (first, _) = unit
            .execute_and_load(&fresh, &a, TallyCommand::Add(1), keyed("k/a"), None)
            .await?;
        let (second, version) = unit
            .execute_and_load(&fresh, &b, TallyCommand::Add(2), keyed("k/b"), None)
            .await?;
        Ok::<_, Failed>((first.total, second.total, version))
    })
    .await
    .expect("replayed");
    assert_eq!(first, (1, 2, 2));
    assert_eq!(retried, first);
    assert_eq!(stored(store, &a).await, (1, 2));
    assert_eq!(stored(store, &b).await, (2, 2));
}

async fn a_refusal_in_a_unit_on_a_stale_kept_state_is_decided_on_the_stream(store: &Store) {
    let (tallies, other_process) = (bus(store), bus(store));
    let id = Uuid::now_v7().to_string();
    // This process keeps the tally as not open.
    assert!(!tallies.load(&id).await.expect("load").0.opened);
    other_process
        .execute(&id, TallyCommand::Open, metadata())
        .await
        .expect("open in the other process");
    let total = run(store, async |unit: &mut Unit| {
        let (tally, _) = unit
            .execute_and_load(&tallies, &id, TallyCommand::Add(2), metadata(), None)
            .await?;
        Ok::<_, Failed>(tally.total)
    })
    .await
    .expect("not refused as not open: the stream says it is");
    assert_eq!(total, 2);
    assert_eq!(stored(store, &id).await, (2, 2));
}

async fn a_refusal_resting_on_a_stale_kept_state_decides_the_whole_unit_again(store: &Store) {
    let (tallies, other_process) = (bus(store), bus(store));
    let id = open_tally(&tallies).await;
    tallies
        .execute(&id, TallyCommand::Add(5), metadata())
        .await
        .expect("add");
    // This process keeps the total at 5; the stream moves on to 0.
    other_process
        .execute(&id, TallyCommand::Add(-5), metadata())
        .await
        .expect("take away in the other process");
    let attempts = AtomicU32::new(0);
    let total = run(store, async |unit: &mut Unit| {
        attempts.fetch_add(1, Ordering::SeqCst);
        unit.execute_and_load(&tallies, &id, TallyCommand::Add(1), metadata(), None)
            .await?;
        // On the kept state this passes the limit (5 + 1 + 1 > 6); on the stream's it
        // does not (0 + 1 + 1).
        let (tally, _) = unit
            .execute_and_load(
                &tallies,
                &id,
                TallyCommand::AddUpTo {
                    amount: 1,
                    limit: 6,
                },
                metadata(),
                None,
            )
            .await?;
        Ok::<_, Failed>(tally.total)
    })
    .await
    .expect("decided again on the stream, not refused");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(total, 2);
    assert_eq!(stored(store, &id).await, (2, 5));
}

async fn a_unit_that_keeps_conflicting_gives_up(store: &Store) {
    let (tallies, other_process) = (bus(store), bus(store));
    let id = open_tally(&tallies).await;
    let attempts = AtomicU32::new(0);
    let gave_up = run(store, async |unit: &mut Unit| {
        attempts.fetch_add(1, Ordering::SeqCst);
        unit.execute_and_load(&tallies, &id, TallyCommand::Add(1), metadata(), None)
            .await?;
        other_process
            .execute(&id, TallyCommand::Add(10), metadata())
            .await
            .expect("add in the other process");
        Ok::<_, Failed>(())
    })
    .await;
    assert!(
        matches!(gave_up, Err(Failed::Unit(UnitError::Conflict { .. }))),
        "{gave_up:?}"
    );
    let tried = attempts.load(Ordering::SeqCst);
    assert!(
        tried > 1,
        "decided again after a conflict ({tried} attempts)"
    );
    assert_eq!(
        stored(store, &id).await,
        (10 * i64::from(tried), 1 + tried as usize)
    );
}

/// A unit adding 1 to `first`, then to `second`, in a task of its own.
fn spawn_adding(
    store: &Store,
    tallies: &Arc<CommandBus<Tally>>,
    first: String,
    second: String,
) -> tokio::task::JoinHandle<Result<(), Failed>> {
    spawn_adding_meeting(store, tallies, first, second, None)
}

/// Where two units wait for each other, at most 200 ms, once per round: the first to
/// arrive waits for the second, or gives up waiting (the other cannot come: it waits
/// for a lock).
#[derive(Debug)]
struct Meeting {
    arrived: std::sync::Mutex<usize>,
    round: tokio::sync::watch::Sender<u64>,
}

impl Meeting {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            arrived: std::sync::Mutex::new(0),
            round: tokio::sync::watch::Sender::new(0),
        })
    }

    async fn meet(&self) {
        let (round, mut ended) = {
            let mut arrived = self.arrived.lock().expect("not poisoned");
            let round = *self.round.borrow();
            if *arrived == 1 {
                *arrived = 0;
                self.round.send_replace(round + 1);
                return;
            }
            *arrived = 1;
            (round, self.round.subscribe())
        };
        let met = tokio::time::timeout(
            Duration::from_millis(200),
            ended.wait_for(|now| *now != round),
        )
        .await;
        if met.is_err() {
            let mut arrived = self.arrived.lock().expect("not poisoned");
            if *self.round.borrow() == round {
                *arrived = 0;
            }
        }
    }
}

/// Like [`spawn_adding`]; with a `meeting`, every attempt that holds a lock meets the
/// other unit before it asks for another — the first attempt once it holds its first
/// aggregate's, a later one (after a wait for a lock) at its start, holding what it
/// waited for — and again before it ends. Two units in opposite orders then both hold
/// one lock and ask for the other's in every attempt in which both can run.
fn spawn_adding_meeting(
    store: &Store,
    tallies: &Arc<CommandBus<Tally>>,
    first: String,
    second: String,
    meeting: Option<Arc<Meeting>>,
) -> tokio::task::JoinHandle<Result<(), Failed>> {
    let (store, tallies) = (store.clone(), Arc::clone(tallies));
    // The loop inline, not `run`: a spawned task must be `Send`, which an
    // `AsyncFnMut` taking a reference cannot promise.
    tokio::spawn(async move {
        let mut attempts = Unit::attempts(&store);
        for attempt in 1.. {
            let unit = attempts.next().await?;
            let planned = async {
                if let Some(meeting) = meeting.as_ref().filter(|_| attempt > 1) {
                    meeting.meet().await;
                }
                let both = async {
                    unit.execute_and_load(&tallies, &first, TallyCommand::Add(1), metadata(), None)
                        .await?;
                    match meeting.as_ref().filter(|_| attempt == 1) {
                        Some(meeting) => meeting.meet().await,
                        // Let the other units take their first lock meanwhile.
                        None => tokio::task::yield_now().await,
                    }
                    unit.execute_and_load(
                        &tallies,
                        &second,
                        TallyCommand::Add(1),
                        metadata(),
                        None,
                    )
                    .await?;
                    Ok::<_, Failed>(())
                }
                .await;
                // Neither lets go of its locks before the other asked for them.
                if let Some(meeting) = &meeting {
                    meeting.meet().await;
                }
                both
            }
            .await;
            if let Some(done) = attempts.commit(planned).await? {
                return Ok(done);
            }
        }
        unreachable!("the attempts end the loop")
    })
}

async fn units_of_one_process_on_one_aggregate_queue_and_all_commit(store: &Store) {
    let tallies = bus(store);
    let shared = open_tally(&tallies).await;
    let mut units = Vec::new();
    for _ in 0..20 {
        let own = open_tally(&tallies).await;
        units.push(spawn_adding(store, &tallies, own, shared.clone()));
    }
    for unit in units {
        unit.await.expect("unit task").expect("every unit commits");
    }
    assert_eq!(stored(store, &shared).await, (20, 21));
}

async fn units_naming_aggregates_in_opposite_orders_never_wait_for_each_other_and_all_commit(
    store: &Store,
) {
    let tallies = bus(store);
    let (a, b) = (open_tally(&tallies).await, open_tally(&tallies).await);
    let units: Vec<_> = (0..20)
        .map(|n| {
            let (first, second) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
            spawn_adding(store, &tallies, first.clone(), second.clone())
        })
        .collect();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        let mut results = Vec::new();
        for unit in units {
            results.push(unit.await.expect("unit task"));
        }
        results
    })
    .await
    .expect("no two units wait for each other for ever");
    // Finding a lock taken is a wait, not a failed attempt: every unit commits.
    assert!(
        finished.iter().all(Result::is_ok),
        "{:?}",
        finished
            .iter()
            .filter(|result| result.is_err())
            .collect::<Vec<_>>()
    );
    assert_eq!(stored(store, &a).await, (20, 21));
    assert_eq!(stored(store, &b).await, (20, 21));
}

/// The timing that starves units which, after finding a lock taken, wait for that lock
/// alone: every attempt of each holds its first lock when it asks for the other's. A
/// unit that waited takes every lock it knows it needs in one order, so one of the two
/// gets both.
async fn two_units_that_keep_meeting_in_opposite_orders_both_commit(store: &Store) {
    let tallies = bus(store);
    let (a, b) = (open_tally(&tallies).await, open_tally(&tallies).await);
    let meeting = Meeting::new();
    let units = [(&a, &b), (&b, &a)].map(|(first, second)| {
        spawn_adding_meeting(
            store,
            &tallies,
            first.clone(),
            second.clone(),
            Some(Arc::clone(&meeting)),
        )
    });
    for unit in units {
        let finished = tokio::time::timeout(Duration::from_secs(60), unit)
            .await
            .expect("no two units wait for each other for ever")
            .expect("unit task");
        assert!(finished.is_ok(), "{finished:?}");
    }
    assert_eq!(stored(store, &a).await, (2, 3));
    assert_eq!(stored(store, &b).await, (2, 3));
}
