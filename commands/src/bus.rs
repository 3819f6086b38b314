//! Running commands: load, decide, append — with conflict retries and idempotency.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_es::persist::SerializedEvent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shopagent_domain::{Aggregate, DomainEvent, EventMetadata};
use tracing::Instrument;

use crate::store::{AppendError, RecordedOutcome, SnapshotUpdate, Store, StoreError};

/// What a command did. For a retried command this is the first attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandOutcome {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version (its last sequence) once the command was applied.
    pub version: i64,
    pub events_appended: i64,
    /// True when an earlier attempt with the same idempotency key had already committed
    /// and nothing new was appended.
    pub replayed: bool,
}

/// Why a command did not take effect. In every case nothing was appended.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command (a business rule).
    #[error(transparent)]
    Rejected(E),
    /// The idempotency key was used before for a different command.
    #[error("idempotency key already used for a different request")]
    IdempotencyKeyReused,
    /// The command's request found its key held by another request (or answered
    /// before): its answer is what the key holds (see [`crate::request_claim`]).
    #[error("the request's idempotency key is held already")]
    RequestKeyTaken,
    /// Concurrent writers kept winning the race for this aggregate.
    #[error("aggregate changed concurrently {attempts} times; giving up")]
    Conflict { attempts: u32 },
    /// The store cannot be reached right now; retrying later may succeed.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The caller expected another version of the aggregate (HTTP `If-Match`).
    #[error("aggregate is at version {actual}, not the expected {expected}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// Anything else: a fault on our side.
    #[error("command failed: {0}")]
    Internal(String),
}

impl<E: std::error::Error> From<StoreError> for CommandError<E> {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::Unavailable(error.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Runs commands against aggregates of type `A`.
///
/// Commands on one aggregate are queued in process (striped locks), so concurrency
/// conflicts only arise between processes; they are retried a bounded number of times.
pub struct CommandBus<A: Aggregate> {
    store: Store,
    max_attempts: u32,
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
    pub(crate) recent: RecentStates<A>,
    _aggregate: PhantomData<A>,
}

const STRIPES: usize = 64;

/// Every this many events, an aggregate's state is stored beside them (in the same
/// transaction), so a command loads that snapshot and the events after it rather than
/// the whole stream: a long-lived mandate or run costs what a short one does.
pub const SNAPSHOT_EVERY: i64 = 64;

/// A snapshot as stored: the state, and the version of its form
/// ([`Aggregate::SNAPSHOT_VERSION`]).
#[derive(Serialize, Deserialize)]
struct StoredState<S> {
    version: u32,
    state: S,
}

/// How a command run ended, short of an error.
enum Ran<A, R> {
    /// Applied (or replayed): its outcome, with the state it made when it appended.
    Applied(CommandOutcome, Option<A>),
    /// The caller's check refused the state it was to be decided on.
    Refused(R),
}

/// The check of a command that any state allows.
fn allow_all<A>(_: &A) -> Result<(), std::convert::Infallible> {
    Ok(())
}

/// An aggregate as loaded for a command.
#[derive(Clone)]
pub(crate) struct Loaded<A> {
    pub(crate) state: A,
    /// Its last sequence (0: no events yet).
    pub(crate) version: i64,
    /// The sequence the state was last stored at (0: never, or in an unusable form).
    snapshot_at: i64,
    /// How many snapshots were stored so far (the store's optimistic check).
    snapshots: i64,
}

/// How many aggregates' latest states a bus keeps in memory, unless told otherwise.
///
/// Enough for the orders and payments of the purchases waiting behind the requests
/// that made them: with 1024, a checkout process some thousands of events behind found
/// none of its orders kept, and loaded two streams for each command it ran. Each kept
/// state is about a kilobyte.
pub const RECENT_STATES: usize = 4096;

/// The latest states this process made or read of the aggregates it used last, the
/// least recently used dropped first. A kept state saves a command the load of its
/// stream (a snapshot and up to [`SNAPSHOT_EVERY`] events, decoded).
///
/// Only ever a hint, because other processes may append to the same streams: a command
/// decided on a kept state appends only if the stream is still at that state's version
/// (the append's optimistic check), and is decided again on the stored stream when it
/// is not, or when it would append nothing; a read uses a kept state only after
/// reading the stream's version.
pub(crate) struct RecentStates<A> {
    /// `None`: nothing is kept.
    entries: Option<Mutex<lru::LruCache<String, Loaded<A>>>>,
}

impl<A: Aggregate> RecentStates<A> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: NonZeroUsize::new(capacity)
                .map(|capacity| Mutex::new(lru::LruCache::new(capacity))),
        }
    }

    /// Runs `f` on the entries, if any are kept. A panic elsewhere while the lock was
    /// held leaves nothing half-changed worth refusing: every entry is checked at use.
    fn with<T>(&self, f: impl FnOnce(&mut lru::LruCache<String, Loaded<A>>) -> T) -> Option<T> {
        let mut entries = self
            .entries
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(f(&mut entries))
    }

    /// Takes the kept state out, for a command that will put back the state it makes.
    fn take(&self, aggregate_id: &str) -> Option<Loaded<A>> {
        let taken = self.with(|entries| entries.pop(aggregate_id)).flatten();
        count_recent::<A>(if taken.is_some() { "hit" } else { "miss" });
        taken
    }

    /// A copy of the kept state, for a read.
    pub(crate) fn copy(&self, aggregate_id: &str) -> Option<Loaded<A>> {
        let copied = self
            .with(|entries| entries.get(aggregate_id).cloned())
            .flatten();
        count_recent::<A>(if copied.is_some() { "hit" } else { "miss" });
        copied
    }

    /// Keeps `loaded`, unless a later version of the aggregate is kept already (a read
    /// that finished after a command on the same aggregate).
    pub(crate) fn keep(&self, aggregate_id: &str, loaded: Loaded<A>) {
        self.with(|entries| match entries.get_mut(aggregate_id) {
            Some(kept) if kept.version > loaded.version => {}
            Some(kept) => *kept = loaded,
            None => {
                entries.put(aggregate_id.to_owned(), loaded);
            }
        });
    }
}

/// Counts a look into the kept states by what it found: `hit`, `miss`, or `stale` (a
/// kept state the stream had moved past).
pub(crate) fn count_recent<A: Aggregate>(result: &'static str) {
    metrics::counter!("shopagent_recent_states_total", "aggregate" => A::TYPE, "result" => result)
        .increment(1);
}

impl<A: Aggregate> Loaded<A> {
    /// The events `command` makes on this state, if the state is at
    /// `expected_version` (when one is given).
    pub(crate) fn decide(
        &self,
        command: &A::Command,
        expected_version: Option<i64>,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        match expected_version {
            Some(expected) if expected != self.version => Err(CommandError::VersionMismatch {
                expected,
                actual: self.version,
            }),
            _ => self
                .state
                .decide(command.clone())
                .map_err(CommandError::Rejected),
        }
    }

    /// An aggregate with no events yet.
    fn empty() -> Self {
        Self {
            state: A::default(),
            version: 0,
            snapshot_at: 0,
            snapshots: 0,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for CommandBus<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("aggregate_type", &A::TYPE)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl<A: Aggregate> CommandBus<A> {
    /// How often a command is decided again after losing a concurrency race.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    pub fn new(store: Store) -> Self {
        Self {
            store,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            recent: RecentStates::new(RECENT_STATES),
            _aggregate: PhantomData,
        }
    }

    /// Keeps the latest states of at most `capacity` aggregates in memory (0: none).
    pub fn with_recent_states(mut self, capacity: usize) -> Self {
        self.recent = RecentStates::new(capacity);
        self
    }

    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Decides `command` against the current state of `aggregate_id` and appends the
    /// resulting events with `metadata`.
    ///
    /// A conflicting concurrent append makes the command be decided again on the new
    /// state, up to the attempt limit. When `metadata` carries an idempotency key that
    /// already committed, the recorded outcome is returned and nothing is appended.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: EventMetadata,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.execute_at_version(aggregate_id, command, metadata, None)
            .await
    }

    /// Tells the bus that `aggregate_id` was only just named (an id made for a new
    /// aggregate), so that the next command on it is decided on the empty state without
    /// reading the stream. Like every kept state, only a hint: if the stream exists
    /// after all (a retried create), the append's version check says so and the command
    /// is decided again on the stream.
    pub fn expect_new(&self, aggregate_id: &str) {
        self.recent.keep(aggregate_id, Loaded::empty());
    }

    /// The current state of `aggregate_id` and its version (0: no events yet).
    ///
    /// A state kept in memory is answered when the stream is still at its version
    /// (one read of the stream's last sequence); otherwise the stream is loaded.
    pub async fn load(&self, aggregate_id: &str) -> Result<(A, i64), CommandError<A::Error>> {
        self.load_settled(aggregate_id, |_| false).await
    }

    /// The state of `aggregate_id`, for facts of it that `settled` says can no longer
    /// change: who owns it and what it was made under, once it exists; a cart's
    /// address once checkout locked it; a payment's terms once the card was requested.
    /// A kept state that `settled` accepts is answered without reading anything — a
    /// later event of the stream cannot have changed what the caller reads of it;
    /// otherwise as [`load`](Self::load). The version answered may be behind the
    /// stream's: a command decided on this state still meets the stream's version when
    /// it appends.
    pub async fn load_settled(
        &self,
        aggregate_id: &str,
        settled: impl FnOnce(&A) -> bool,
    ) -> Result<(A, i64), CommandError<A::Error>> {
        if let Some(kept) = self.recent.copy(aggregate_id) {
            if settled(&kept.state)
                || self.store.stream_version(A::TYPE, aggregate_id).await? == kept.version
            {
                return Ok((kept.state, kept.version));
            }
            count_recent::<A>("stale");
        }
        self.load_stored(aggregate_id).await
    }

    /// The stream as stored, kept for the next command or load.
    async fn load_stored(&self, aggregate_id: &str) -> Result<(A, i64), CommandError<A::Error>> {
        let loaded = self.load_state(aggregate_id).await?;
        let answer = (loaded.state.clone(), loaded.version);
        self.recent.keep(aggregate_id, loaded);
        Ok(answer)
    }

    /// The state of `aggregate_id` as of `version` or later, and its version: what a
    /// reader of the log needs to act on the event at `version` (the state that event
    /// made, or a newer one). A kept state that far on is answered without reading
    /// anything; otherwise the stream is loaded (a kept state older than the event is
    /// stale for certain: no version read first). A change made since by another
    /// process may be missing from it, as it may from any read a moment later: a command
    /// decided on what it shows still meets the stream's version when it appends.
    pub async fn load_since(
        &self,
        aggregate_id: &str,
        version: i64,
    ) -> Result<(A, i64), CommandError<A::Error>> {
        if let Some(kept) = self.recent.copy(aggregate_id)
            && kept.version >= version
        {
            return Ok((kept.state, kept.version));
        }
        self.load_stored(aggregate_id).await
    }

    /// Every event of `aggregate_id`, in sequence order.
    pub async fn events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        self.store
            .select_events(A::TYPE, aggregate_id, 0)
            .await?
            .into_iter()
            .map(|event| read_event::<A>(&event).map(|(_, event)| event))
            .collect()
    }

    /// The stored snapshot, when its form is this code's, with the events after it
    /// applied; otherwise the whole stream applied to the default state.
    pub(crate) async fn load_state(
        &self,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = Loaded::empty();
        let (snapshot, mut events) = self
            .store
            .snapshot_and_events(A::TYPE, aggregate_id)
            .await?;
        if let Some(snapshot) = snapshot {
            loaded.snapshots = snapshot.current_snapshot as i64;
            match serde_json::from_value::<StoredState<A>>(snapshot.aggregate) {
                Ok(stored) if stored.version == A::SNAPSHOT_VERSION => {
                    loaded.state = stored.state;
                    loaded.version = snapshot.current_sequence as i64;
                    loaded.snapshot_at = loaded.version;
                }
                // Another form: the events are the truth; the next snapshot replaces it.
                _ => {
                    tracing::debug!(
                        aggregate_type = A::TYPE,
                        aggregate_id,
                        "snapshot of another form ignored"
                    );
                    events = self.store.select_events(A::TYPE, aggregate_id, 0).await?;
                }
            }
        }
        for event in &events {
            let (sequence, event) = read_event::<A>(event)?;
            loaded.state.apply(event);
            loaded.version = sequence;
        }
        Ok(loaded)
    }

    /// The lock that queues this process's commands on `aggregate_id` (shared with the
    /// aggregates whose ids hash alike).
    pub(crate) fn stripe(&self, aggregate_id: &str) -> &Arc<tokio::sync::Mutex<()>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(aggregate_id);
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    /// Like [`execute`](Self::execute), but only if the aggregate is at
    /// `expected_version` (when given); otherwise [`CommandError::VersionMismatch`].
    /// A conflict with an expected version is not retried: the caller's view is stale.
    pub async fn execute_at_version(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: EventMetadata,
        expected_version: Option<i64>,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        match self
            .run(aggregate_id, command, metadata, expected_version, allow_all)
            .await?
        {
            Ran::Applied(outcome, _) => Ok(outcome),
            Ran::Refused(never) => match never {},
        }
    }

    /// Like [`execute_at_version`](Self::execute_at_version), and answers the
    /// aggregate's state and version once the command was applied: the state the
    /// command made when it appended (no second read), read from the store when it was
    /// a replay or appended nothing.
    pub async fn execute_and_load(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: EventMetadata,
        expected_version: Option<i64>,
    ) -> Result<(A, i64), CommandError<A::Error>> {
        match self
            .execute_and_load_if(aggregate_id, command, metadata, expected_version, allow_all)
            .await?
        {
            Ok(done) => Ok(done),
            Err(never) => match never {},
        }
    }

    /// Like [`execute_and_load`](Self::execute_and_load), if `allow` accepts the state
    /// the command is decided on (who may change it, say): the check and the decision
    /// share one read. When `allow` refuses, nothing is appended and its refusal comes
    /// back as `Ok(Err(refusal))`.
    pub async fn execute_and_load_if<R>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: EventMetadata,
        expected_version: Option<i64>,
        allow: impl Fn(&A) -> Result<(), R>,
    ) -> Result<Result<(A, i64), R>, CommandError<A::Error>> {
        match self
            .run(aggregate_id, command, metadata, expected_version, allow)
            .await?
        {
            Ran::Applied(outcome, Some(state)) => Ok(Ok((state, outcome.version))),
            Ran::Applied(_, None) => self.load(aggregate_id).await.map(Ok),
            Ran::Refused(refusal) => Ok(Err(refusal)),
        }
    }

    /// Runs a command in its span, counted by outcome; with the state it made, when it
    /// appended.
    async fn run<R>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: EventMetadata,
        expected_version: Option<i64>,
        allow: impl Fn(&A) -> Result<(), R>,
    ) -> Result<Ran<A, R>, CommandError<A::Error>> {
        let span = tracing::info_span!(
            "command",
            otel.name = %format_args!("{} command", A::TYPE),
            aggregate_type = A::TYPE,
            aggregate_id,
            outcome = tracing::field::Empty,
            events_appended = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // A caller outside any trace may still name one (a traceparent it was given).
        crate::trace::continue_trace_unless_traced(&span, metadata.traceparent.as_deref());
        let result = self
            .decide_and_append(aggregate_id, command, metadata, expected_version, allow)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(Ran::Applied(outcome, _)) if outcome.replayed => "replayed",
            Ok(Ran::Applied(..)) => "ok",
            Ok(Ran::Refused(_)) => "refused",
            Err(CommandError::Rejected(_) | CommandError::IdempotencyKeyReused) => "rejected",
            Err(CommandError::RequestKeyTaken) => "replayed",
            Err(CommandError::Conflict { .. } | CommandError::VersionMismatch { .. }) => "conflict",
            Err(CommandError::Unavailable(_)) => "unavailable",
            Err(CommandError::Internal(_)) => "error",
        };
        count_command(A::TYPE, outcome);
        span.record("outcome", outcome);
        match &result {
            Ok(Ran::Applied(done, _)) => {
                span.record("events_appended", done.events_appended);
            }
            Ok(Ran::Refused(_)) => {}
            // A rejection is the caller's mistake, not a fault of this service; a key
            // held already is a retry, answered from what the key holds.
            Err(
                CommandError::Rejected(_)
                | CommandError::IdempotencyKeyReused
                | CommandError::RequestKeyTaken,
            ) => {}
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn decide_and_append<R>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        mut metadata: EventMetadata,
        expected_version: Option<i64>,
        allow: impl Fn(&A) -> Result<(), R>,
    ) -> Result<Ran<A, R>, CommandError<A::Error>> {
        // A key that committed before is not looked up first: the append itself meets
        // its record (the record's primary key), and the record answers. That saves
        // every command a round trip; a command decided again after it committed may
        // also be refused by, or be a no-op on, the state it made, so the record is
        // read on those paths too.
        let metadata_value = prepare_metadata::<A>(aggregate_id, &command, &mut metadata)?;

        let _queued = self.stripe(aggregate_id).lock().await;
        // A kept state is tried first, and only once. Whatever it does not end in is
        // decided again on the stream as stored (see `RecentStates`): a stale state may
        // cost a round trip, never a wrong answer.
        let mut kept = self.recent.take(aggregate_id);
        let mut attempt = 0;
        while attempt < self.max_attempts {
            let (loaded, from_memory) = match kept.take() {
                Some(loaded) => (loaded, true),
                None => {
                    attempt += 1;
                    (self.load_state(aggregate_id).await?, false)
                }
            };
            if let Err(refusal) = allow(&loaded.state) {
                if from_memory {
                    continue;
                }
                return Ok(Ran::Refused(refusal));
            }
            let version = loaded.version;
            let decided = loaded.decide(&command, expected_version);
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                _ if from_memory => continue,
                not_appended => {
                    self.recent.keep(aggregate_id, loaded);
                    let outcome = match self.recorded(&metadata).await? {
                        Some(outcome) => Ok(outcome),
                        None => not_appended.map(|_| self.outcome(aggregate_id, version, 0, false)),
                    };
                    return outcome.map(|outcome| Ran::Applied(outcome, None));
                }
            };
            let Staged {
                serialized,
                snapshot,
                made,
            } = stage(aggregate_id, loaded, &events, &metadata_value)?;
            match self.store.append(&serialized, snapshot).await {
                Ok(_) => {
                    let appended = serialized.len() as i64;
                    let outcome = self.outcome(aggregate_id, made.version, appended, false);
                    let state = made.state.clone();
                    self.recent.keep(aggregate_id, made);
                    return Ok(Ran::Applied(outcome, Some(state)));
                }
                Err(AppendError::Conflict | AppendError::DuplicateCommand) => {
                    // The winner may have been this very command, sent twice at once.
                    if let Some(outcome) = self.recorded(&metadata).await? {
                        return Ok(Ran::Applied(outcome, None));
                    }
                    if from_memory {
                        count_recent::<A>("stale");
                        continue;
                    }
                    tracing::debug!(
                        aggregate_type = A::TYPE,
                        aggregate_id,
                        attempt,
                        "append conflict"
                    );
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                Err(AppendError::RequestKeyTaken) => return Err(CommandError::RequestKeyTaken),
                Err(AppendError::Store(error)) => return Err(error.into()),
                Err(error @ AppendError::Invalid(_)) => {
                    return Err(CommandError::Internal(error.to_string()));
                }
            }
        }
        Err(CommandError::Conflict {
            attempts: self.max_attempts,
        })
    }

    pub(crate) async fn recorded(
        &self,
        metadata: &EventMetadata,
    ) -> Result<Option<CommandOutcome>, CommandError<A::Error>> {
        let Some(key) = &metadata.idempotency_key else {
            return Ok(None);
        };
        let Some(recorded) = self
            .store
            .recorded_outcome(&metadata.tenant, key.as_str())
            .await?
        else {
            return Ok(None);
        };
        let RecordedOutcome {
            request_digest,
            aggregate_type,
            aggregate_id,
            first_sequence,
            last_sequence,
        } = recorded;
        if Some(&request_digest) != metadata.request_digest.as_ref() {
            return Err(CommandError::IdempotencyKeyReused);
        }
        Ok(Some(CommandOutcome {
            aggregate_type,
            aggregate_id,
            version: last_sequence,
            events_appended: last_sequence - first_sequence + 1,
            replayed: true,
        }))
    }

    fn outcome(
        &self,
        aggregate_id: &str,
        version: i64,
        appended: i64,
        replayed: bool,
    ) -> CommandOutcome {
        CommandOutcome {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version,
            events_appended: appended,
            replayed,
        }
    }
}

/// Completes a command's metadata (the digest of the request, when the caller gave
/// none; the current span) and answers it as stored with each event.
pub(crate) fn prepare_metadata<A: Aggregate>(
    aggregate_id: &str,
    command: &A::Command,
    metadata: &mut EventMetadata,
) -> Result<serde_json::Value, CommandError<A::Error>> {
    if metadata.idempotency_key.is_some() && metadata.request_digest.is_none() {
        // A caller that knows the original request (HTTP: its body) supplies the
        // digest; otherwise the command is the request.
        metadata.request_digest = Some(request_digest::<A>(aggregate_id, command)?);
    }
    // The events carry this command's span, which later readers continue.
    if let Some(traceparent) = crate::trace::current_traceparent() {
        metadata.traceparent = Some(traceparent);
    }
    serde_json::to_value(metadata.to_map())
        .map_err(|error| CommandError::Internal(error.to_string()))
}

/// A command's events as they will be stored, with the snapshot due and the state they
/// make.
pub(crate) struct Staged<A> {
    pub(crate) serialized: Vec<SerializedEvent>,
    pub(crate) snapshot: Option<SnapshotUpdate>,
    pub(crate) made: Loaded<A>,
}

/// Stages `events` decided on `loaded`. The state is made from the events as they are
/// stored, so that it is the state a load of the stream would give.
pub(crate) fn stage<A: Aggregate>(
    aggregate_id: &str,
    loaded: Loaded<A>,
    events: &[A::Event],
    metadata: &serde_json::Value,
) -> Result<Staged<A>, CommandError<A::Error>> {
    let serialized = serialize::<A>(aggregate_id, loaded.version, events, metadata)?;
    let mut made = Loaded {
        version: loaded.version + events.len() as i64,
        ..loaded
    };
    for event in &serialized {
        let (_, event) = read_event::<A>(event)?;
        made.state.apply(event);
    }
    let snapshot = if made.version - made.snapshot_at >= SNAPSHOT_EVERY {
        made.snapshot_at = made.version;
        made.snapshots += 1;
        Some(snapshot_of(&made.state, made.snapshots)?)
    } else {
        None
    };
    Ok(Staged {
        serialized,
        snapshot,
        made,
    })
}

/// Identifies a request by what it asks for, so a reused key with a different request
/// is caught.
fn request_digest<A: Aggregate>(
    aggregate_id: &str,
    command: &A::Command,
) -> Result<String, CommandError<A::Error>> {
    let body =
        serde_json::to_vec(command).map_err(|error| CommandError::Internal(error.to_string()))?;
    let mut hasher = Sha256::new();
    hasher.update(A::TYPE.as_bytes());
    hasher.update([0]);
    hasher.update(aggregate_id.as_bytes());
    hasher.update([0]);
    hasher.update(&body);
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

fn serialize<A: Aggregate>(
    aggregate_id: &str,
    version: i64,
    events: &[A::Event],
    metadata: &serde_json::Value,
) -> Result<Vec<SerializedEvent>, CommandError<A::Error>> {
    events
        .iter()
        .zip(version + 1..)
        .map(|(event, sequence)| {
            Ok(SerializedEvent {
                aggregate_id: aggregate_id.to_owned(),
                sequence: sequence as usize,
                aggregate_type: A::TYPE.to_owned(),
                event_type: event.event_type().to_owned(),
                event_version: event.event_version().to_owned(),
                payload: serde_json::to_value(event)
                    .map_err(|error| CommandError::Internal(error.to_string()))?,
                metadata: metadata.clone(),
            })
        })
        .collect()
}

/// A stored event as the aggregate's event, with its sequence.
fn read_event<A: Aggregate>(
    event: &SerializedEvent,
) -> Result<(i64, A::Event), CommandError<A::Error>> {
    use serde::Deserialize as _;
    let sequence = event.sequence as i64;
    A::Event::deserialize(&event.payload)
        .map(|payload| (sequence, payload))
        .map_err(|error| {
            CommandError::Internal(format!(
                "{} {} event {sequence} cannot be read: {error}",
                A::TYPE,
                event.aggregate_id
            ))
        })
}

/// `state` as a snapshot, the `number`th of its aggregate. One is stored with an append
/// that takes the aggregate [`SNAPSHOT_EVERY`] events or more past its last snapshot.
fn snapshot_of<A: Aggregate>(
    state: &A,
    number: i64,
) -> Result<SnapshotUpdate, CommandError<A::Error>> {
    let payload = serde_json::to_value(StoredState {
        version: A::SNAPSHOT_VERSION,
        state,
    })
    .map_err(|error| CommandError::Internal(error.to_string()))?;
    Ok(SnapshotUpdate {
        payload,
        current_snapshot: number,
    })
}

/// Counts a command by its aggregate type and outcome (`shopagent_commands_total`).
pub(crate) fn count_command(aggregate: &'static str, outcome: &'static str) {
    metrics::counter!("shopagent_commands_total", "aggregate" => aggregate, "outcome" => outcome)
        .increment(1);
}

/// A short, jittered pause so that racing writers do not collide again in lockstep.
pub(crate) fn conflict_backoff(attempt: u32) -> Duration {
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 4);
    Duration::from_millis(u64::from(attempt) * 2 + jitter)
}
