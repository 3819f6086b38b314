//! Commands on several aggregates that commit together: one transaction, one wait for
//! the disk, and never half of them.

use std::any::Any;
use std::sync::Arc;

use cqrs_es::persist::SerializedEvent;
use shopagent_domain::{Aggregate, EventMetadata};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::Instrument;

use crate::bus::{
    Loaded, Staged, conflict_backoff, count_command, count_recent, prepare_metadata, stage,
};
use crate::store::{AppendError, SnapshotUpdate, StreamAppend};
use crate::{CommandBus, CommandError, Store, StoreError};

/// Why a unit did not commit. Nothing of it was stored in every case.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// Concurrent writers kept changing the unit's aggregates first.
    #[error("the aggregates changed concurrently {attempts} times; giving up")]
    Conflict { attempts: u32 },
    /// The unit's request found its key held by another request (or answered before):
    /// its answer is what the key holds (see [`crate::request_claim`]).
    #[error("the request's idempotency key is held already")]
    RequestKeyTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault on our side: events that cannot be stored as made.
    #[error("unit failed: {0}")]
    Internal(String),
}

/// Commands on aggregates of any types, decided one after the other and appended in
/// one transaction: all of them commit, with their idempotency records, or none does.
/// A checkout's cart, the budget it reserves and the orders it creates are one unit.
///
/// Each command is decided when it is given, on the state the unit has made of its
/// aggregate so far, else on the state its bus kept, else on the stream as stored. Its
/// answer holds only if the unit commits. Within the process a unit holds each of its
/// aggregates' command locks until it ends, as a [`CommandBus`] command does; a change
/// from another process fails the commit (each stream's next sequence is taken), and
/// the caller decides the whole unit again in the next of its [`Attempts`], on the
/// streams as stored. So a plan must not run a command outside its unit on an aggregate
/// it named in the unit: it would wait for the unit's own lock. Like [`CommandBus`], a decision that appends nothing on a kept state is
/// checked against the stream, so a stale kept state never gives a wrong answer.
pub struct Unit {
    store: Store,
    /// Decide on the streams as stored, not on kept states: an attempt after a
    /// conflict.
    fresh: bool,
    /// A kept state the unit decided on was stale: this attempt cannot commit.
    stale: bool,
    /// The lock of an aggregate this attempt could not take: it cannot commit.
    busy: Option<Arc<Mutex<()>>>,
    /// The locks that queue this process's commands on the unit's aggregates, held
    /// until the unit ends.
    held: Vec<OwnedMutexGuard<()>>,
    aggregates: Vec<Box<dyn UnitMember>>,
    /// Each command's aggregate type and outcome, counted when the unit ends.
    outcomes: Vec<(&'static str, &'static str)>,
}

/// How many attempts a unit makes that the database refused (a conflict, a stale kept
/// state) before it gives up.
const MAX_ATTEMPTS: u32 = 5;
/// How many times a unit may find a lock of this process taken. Each time it waits for
/// that command to end, so this is not contention with other processes, and these
/// waits do not count as attempts: under load a checkout may find a few of its
/// aggregates' locks taken in a row without anything having gone wrong. The bound only
/// makes sure a unit ends.
const MAX_WAITS: u32 = 100;

/// The attempts at one unit, until one commits: each [`next`](Attempts::next) is a new
/// unit, and [`commit`](Attempts::commit) ends it.
///
/// ```text
/// let mut attempts = Unit::attempts(&store);
/// let answer = loop {
///     let unit = attempts.next().await?;
///     let planned = async { /* unit.execute_and_load(…) … */ }.await;
///     if let Some(answer) = attempts.commit(planned).await? {
///         break answer;
///     }
/// };
/// ```
#[derive(Debug)]
pub struct Attempts {
    store: Store,
    /// Attempts made, not counting those after a wait for a lock.
    made: u32,
    waits: u32,
    /// The locks the last attempt that found one taken held, and the one it found taken:
    /// what the next attempt knows it needs, and takes before anything else.
    needed: Vec<Arc<Mutex<()>>>,
    current: Option<Unit>,
    /// Why the last attempt did not commit.
    retry: Option<Retry>,
}

#[derive(Debug)]
enum Retry {
    /// A concurrent change, or a stale kept state: decide on the streams as stored.
    Conflict,
    /// Another command of this process held the lock of an aggregate: take every lock
    /// the unit knows it needs ([`Attempts::needed`]) first.
    Busy,
}

impl Attempts {
    /// The next attempt's unit: fresh (on the streams as stored) after a conflict, after
    /// a short jittered pause; after the last attempt, [`UnitError::Conflict`].
    pub async fn next(&mut self) -> Result<&mut Unit, UnitError> {
        let waited = matches!(self.retry, Some(Retry::Busy));
        if waited {
            self.waits += 1;
        }
        if self.made == MAX_ATTEMPTS && !waited || self.waits > MAX_WAITS {
            return Err(UnitError::Conflict {
                attempts: self.made,
            });
        }
        if !waited {
            self.made += 1;
        }
        let mut unit = Unit {
            store: self.store.clone(),
            fresh: false,
            stale: false,
            busy: None,
            held: Vec::new(),
            aggregates: Vec::new(),
            outcomes: Vec::new(),
        };
        match self.retry.take() {
            None => {}
            Some(Retry::Conflict) => {
                tracing::debug!(attempt = self.made, "unit conflict");
                tokio::time::sleep(conflict_backoff(self.made)).await;
                unit.fresh = true;
            }
            Some(Retry::Busy) => unit.held = take_in_order(&self.needed).await,
        }
        Ok(self.current.insert(unit))
    }

    /// Ends the current attempt: `planned` is what the caller decided in it. An error
    /// commits nothing and is answered as it is; otherwise everything the unit decided
    /// is appended in one transaction and `planned`'s answer returned. `None`: a
    /// concurrent change, a stale kept state or a busy lock got in the way; decide
    /// again in the next attempt.
    pub async fn commit<T, E>(&mut self, planned: Result<T, E>) -> Result<Option<T>, E>
    where
        E: From<UnitError>,
    {
        let Some(mut unit) = self.current.take() else {
            return Err(UnitError::Internal("no attempt to commit".to_owned()).into());
        };
        if let Some(busy) = unit.busy.take() {
            self.needed = unit
                .held
                .iter()
                .map(|held| Arc::clone(OwnedMutexGuard::mutex(held)))
                .chain([busy])
                .collect();
            self.retry = Some(Retry::Busy);
            return Ok(None);
        }
        if unit.stale {
            self.retry = Some(Retry::Conflict);
            return Ok(None);
        }
        let outcomes = std::mem::take(&mut unit.outcomes);
        let answer = match planned {
            Ok(answer) => answer,
            Err(error) => {
                // Nothing commits: only what was refused happened.
                count(outcomes.into_iter().filter(|(_, outcome)| *outcome != "ok"));
                return Err(error);
            }
        };
        match unit.append().await {
            Ok(()) => {
                count(outcomes);
                Ok(Some(answer))
            }
            Err(UnitError::Conflict { .. }) => {
                self.retry = Some(Retry::Conflict);
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }
}

impl Unit {
    /// The attempts at a unit on `store`.
    pub fn attempts(store: &Store) -> Attempts {
        Attempts {
            store: store.clone(),
            made: 0,
            waits: 0,
            needed: Vec::new(),
            current: None,
            retry: None,
        }
    }

    /// Decides `command` on `aggregate_id` within the unit, like
    /// [`CommandBus::execute_and_load`]: the aggregate's state and version once the
    /// command is applied. A command whose idempotency key committed before answers the
    /// state as stored and adds nothing to the unit.
    pub async fn execute_and_load<A: Aggregate>(
        &mut self,
        bus: &Arc<CommandBus<A>>,
        aggregate_id: &str,
        command: A::Command,
        metadata: EventMetadata,
        expected_version: Option<i64>,
    ) -> Result<(A, i64), CommandError<A::Error>> {
        // As the bus's: the events carry this span, which later readers continue.
        let span = tracing::info_span!(
            "command",
            otel.name = %format_args!("{} command", A::TYPE),
            aggregate_type = A::TYPE,
            aggregate_id,
        );
        self.decide(bus, aggregate_id, command, metadata, expected_version)
            .instrument(span)
            .await
    }

    async fn decide<A: Aggregate>(
        &mut self,
        bus: &Arc<CommandBus<A>>,
        aggregate_id: &str,
        command: A::Command,
        mut metadata: EventMetadata,
        expected_version: Option<i64>,
    ) -> Result<(A, i64), CommandError<A::Error>> {
        let metadata_value = prepare_metadata::<A>(aggregate_id, &command, &mut metadata)?;
        let index = self.member(bus, aggregate_id).await?;
        let store = self.store.clone();
        let Some(member) = self.aggregates[index].as_any().downcast_mut::<Member<A>>() else {
            return Err(CommandError::Internal(format!(
                "{aggregate_id} is in the unit as another type of aggregate"
            )));
        };
        // An attempt after a conflict may have met a command that committed already (a
        // retried request whose first answer was lost, or its twin running at once): its
        // record answers, before it is decided again.
        if self.fresh && bus.recorded(&metadata).await?.is_some() {
            self.outcomes.push((A::TYPE, "replayed"));
            return Ok((member.state.state.clone(), member.state.version));
        }
        loop {
            let version = member.state.version;
            let decided = member.state.decide(&command, expected_version);
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                not_appended => {
                    if member.from_memory {
                        if member.parts.is_empty() {
                            // Nothing of the unit rests on the kept state: decide again
                            // on the stream.
                            member.state = bus.load_state(aggregate_id).await?;
                            member.from_memory = false;
                            continue;
                        }
                        // Earlier commands of the unit rest on it: check it was current.
                        let stored = store.stream_version(A::TYPE, aggregate_id).await?;
                        if stored != member.kept_version {
                            count_recent::<A>("stale");
                            self.stale = true;
                            return Err(CommandError::Conflict { attempts: 1 });
                        }
                        member.from_memory = false;
                    }
                    if bus.recorded(&metadata).await?.is_some() {
                        self.outcomes.push((A::TYPE, "replayed"));
                        return Ok((member.state.state.clone(), version));
                    }
                    self.outcomes.push((A::TYPE, outcome_of(&not_appended)));
                    return not_appended.map(|_| (member.state.state.clone(), version));
                }
            };
            let Staged {
                serialized,
                snapshot,
                made,
            } = stage(aggregate_id, member.state.clone(), &events, &metadata_value)?;
            member.parts.push((serialized, snapshot));
            member.state = made;
            self.outcomes.push((A::TYPE, "ok"));
            return Ok((member.state.state.clone(), member.state.version));
        }
    }

    /// The index of `aggregate_id`'s member of the unit, made on first use from the
    /// state its bus kept (unless the unit is fresh) or from its stream.
    async fn member<A: Aggregate>(
        &mut self,
        bus: &Arc<CommandBus<A>>,
        aggregate_id: &str,
    ) -> Result<usize, CommandError<A::Error>> {
        if let Some(index) = self
            .aggregates
            .iter()
            .position(|member| member.names(A::TYPE, aggregate_id))
        {
            return Ok(index);
        }
        // Commands of this process on the aggregate queue behind the unit, as they do
        // behind each other. The first lock is waited for; a later one only taken if
        // free, so two units that name the same aggregates in another order never wait
        // for each other: the one that finds a lock taken lets go of its own, and its
        // next attempt takes every lock it now knows it needs, in one order
        // (`take_in_order`), before anything else.
        let stripe = bus.stripe(aggregate_id);
        if !self
            .held
            .iter()
            .any(|held| Arc::ptr_eq(OwnedMutexGuard::mutex(held), stripe))
        {
            if self.held.is_empty() {
                self.held.push(Arc::clone(stripe).lock_owned().await);
            } else {
                match Arc::clone(stripe).try_lock_owned() {
                    Ok(taken) => self.held.push(taken),
                    Err(_) => {
                        self.busy = Some(Arc::clone(stripe));
                        return Err(CommandError::Conflict { attempts: 1 });
                    }
                }
            }
        }
        let kept = if self.fresh {
            None
        } else {
            bus.recent.copy(aggregate_id)
        };
        let from_memory = kept.is_some();
        let state = match kept {
            Some(kept) => kept,
            None => bus.load_state(aggregate_id).await?,
        };
        self.aggregates.push(Box::new(Member {
            bus: Arc::clone(bus),
            aggregate_id: aggregate_id.to_owned(),
            kept_version: state.version,
            from_memory,
            state,
            parts: Vec::new(),
        }));
        Ok(self.aggregates.len() - 1)
    }

    /// Appends everything the unit decided, in one transaction; on success each bus
    /// keeps the state the unit made of its aggregates.
    async fn append(self) -> Result<(), UnitError> {
        let parts: Vec<StreamAppend<'_>> = self
            .aggregates
            .iter()
            .flat_map(|member| member.parts())
            .collect();
        if !parts.is_empty() {
            // The unit's commands together: their append is one.
            let span =
                tracing::info_span!("unit", otel.name = "unit command", streams = parts.len());
            let appended = self.store.append_all(&parts).instrument(span).await;
            match appended {
                Ok(_) => {}
                Err(AppendError::Conflict | AppendError::DuplicateCommand) => {
                    return Err(UnitError::Conflict { attempts: 1 });
                }
                Err(AppendError::RequestKeyTaken) => return Err(UnitError::RequestKeyTaken),
                Err(AppendError::Store(error)) => return Err(error.into()),
                Err(error @ AppendError::Invalid(_)) => {
                    return Err(UnitError::Internal(error.to_string()));
                }
            }
        }
        for member in self.aggregates {
            member.committed();
        }
        Ok(())
    }
}

/// Takes `locks`, waiting for each, in one order every unit follows (their addresses),
/// so that two units taking the same locks never wait for each other: whichever takes
/// the first they share goes on to take the rest. Units that name aggregates in
/// opposite orders would otherwise keep letting go of their own lock and taking the
/// other's, each finding its second one taken again, for as long as their timing
/// stays alike.
async fn take_in_order(locks: &[Arc<Mutex<()>>]) -> Vec<OwnedMutexGuard<()>> {
    let mut ordered: Vec<&Arc<Mutex<()>>> = locks.iter().collect();
    ordered.sort_by_key(|lock| Arc::as_ptr(lock));
    ordered.dedup_by(|a, b| Arc::ptr_eq(a, b));
    let mut held = Vec::with_capacity(ordered.len());
    for lock in ordered {
        held.push(Arc::clone(lock).lock_owned().await);
    }
    held
}

/// Counts the commands of a unit that committed, as [`CommandBus`] counts its own
/// (`shopagent_commands_total`).
fn count(outcomes: impl IntoIterator<Item = (&'static str, &'static str)>) {
    for (aggregate, outcome) in outcomes {
        count_command(aggregate, outcome);
    }
}

/// The outcome of a command that appended nothing, as counted.
fn outcome_of<T, E: std::error::Error>(result: &Result<T, CommandError<E>>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CommandError::VersionMismatch { .. }) => "conflict",
        Err(_) => "rejected",
    }
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("fresh", &self.fresh)
            .field("stale", &self.stale)
            .field("aggregates", &self.aggregates.len())
            .field("locks_held", &self.held.len())
            .finish()
    }
}

/// One aggregate of a unit, whatever its type.
trait UnitMember: Send {
    fn names(&self, aggregate_type: &str, aggregate_id: &str) -> bool;
    fn parts(&self) -> Vec<StreamAppend<'_>>;
    fn as_any(&mut self) -> &mut dyn Any;
    /// The unit committed: the bus keeps the state the unit made.
    fn committed(self: Box<Self>);
}

struct Member<A: Aggregate> {
    bus: Arc<CommandBus<A>>,
    aggregate_id: String,
    /// The state as the unit made it so far.
    state: Loaded<A>,
    /// The state the unit started from was kept in memory, and not checked since.
    from_memory: bool,
    /// The version of the state the unit started from.
    kept_version: i64,
    /// One run of events per command that appends, with the snapshot due.
    parts: Vec<(Vec<SerializedEvent>, Option<SnapshotUpdate>)>,
}

impl<A: Aggregate> UnitMember for Member<A> {
    fn names(&self, aggregate_type: &str, aggregate_id: &str) -> bool {
        A::TYPE == aggregate_type && self.aggregate_id == aggregate_id
    }

    fn parts(&self) -> Vec<StreamAppend<'_>> {
        self.parts
            .iter()
            .map(|(events, snapshot)| StreamAppend {
                events,
                snapshot: snapshot.clone(),
            })
            .collect()
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn committed(self: Box<Self>) {
        if !self.parts.is_empty() || !self.from_memory {
            self.bus.recent.keep(&self.aggregate_id, self.state);
        }
    }
}
