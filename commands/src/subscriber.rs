//! Checkpointed subscribers with side effects: process managers, publishers.
//!
//! Unlike a projection, a subscriber's work happens outside the database transaction
//! (it issues commands, calls merchants, publishes to a broker), so it cannot commit
//! with its checkpoint. It is therefore *at least once*: an event whose handling
//! succeeded but whose checkpoint was not yet saved is handled again after a crash, and
//! every handler must be idempotent — derive idempotency keys from the event id.
//!
//! On PostgreSQL a subscriber runs on one instance at a time: its runner holds a
//! session advisory lock named after it, on a connection of its own; if the instance
//! dies, the connection closes, the lock is released and another instance takes over.
//! The embedded SQLite store serves a single process.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::format_timestamp;
use crate::{Database, LogCursor, Store, StoreError, StoredEvent};
use futures::StreamExt;
use sqlx::PgConnection;
use sqlx::pool::PoolConnection;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Why a step could not run: the store failed. The step is retried.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] sqlx::Error),
}

/// Why handling an event failed. The event is handled again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// A side-effecting reader of the log.
#[async_trait::async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Stable name: the key of its checkpoint and of its lease.
    fn name(&self) -> &'static str;

    /// Handles one event, at least once. Must be idempotent.
    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError>;

    /// Whether [`Subscriber::handle`] does anything with `event`. The runner moves the
    /// checkpoint past the events a subscriber passes over without a write for each:
    /// a process that acts on a few kinds of event keeps up with a busy log.
    fn acts_on(&self, _event: &StoredEvent) -> bool {
        true
    }

    /// Whether the runner hands it whole batches ([`Subscriber::handle_batch`]) and
    /// moves the checkpoint once per batch, instead of event by event. For subscribers
    /// whose outside calls are cheaper in bulk (a publisher); a failure then repeats the
    /// whole batch.
    fn batched(&self) -> bool {
        false
    }

    /// How many events the runner may handle at once, each of a different
    /// [`Subscriber::partition`]. 1, the default: one at a time, in log order.
    fn concurrency(&self) -> usize {
        1
    }

    /// How many events the runner reads from the log at a time, unless told otherwise
    /// ([`SubscriberRunner::with_batch_size`]).
    fn batch_size(&self) -> u32 {
        100
    }

    /// The events that must be handled in log order with `event`: those of the same
    /// partition (an order, say). Events of different partitions may be handled at the
    /// same time, up to [`Subscriber::concurrency`], so one slow outside call holds up
    /// only its own partition. A partition that keeps failing still holds the
    /// checkpoint: the others go on only within the batch read after it. `None` is one
    /// partition of its own.
    fn partition(&self, _event: &StoredEvent) -> Option<String> {
        None
    }

    /// Handles a batch of consecutive events, in order, at least once.
    async fn handle_batch(&self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        for event in events {
            self.handle(event).await?;
        }
        Ok(())
    }
}

/// Feeds one subscriber from the log.
#[derive(Clone)]
pub struct SubscriberRunner {
    store: Store,
    subscriber: Arc<dyn Subscriber>,
    batch_size: u32,
    idle_poll: Duration,
    last_error: Arc<std::sync::Mutex<LastError>>,
    throughput: Arc<std::sync::Mutex<Throughput>>,
    /// Events past the checkpoint already handled by a partitioned step that failed
    /// elsewhere: the retry passes over them instead of repeating their side effects.
    handled_ahead: Arc<std::sync::Mutex<HashSet<Uuid>>>,
    /// The checkpoint as this runner last wrote it ([`SavedCursor`]).
    saved: SavedCursor,
}

impl std::fmt::Debug for SubscriberRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberRunner")
            .field("subscriber", &self.subscriber.name())
            .finish()
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub handled: usize,
    /// A handler failed; the checkpoint stays before the failed event.
    pub failed: bool,
}

/// What the last failed step reported, for status and tests.
pub type LastError = Option<String>;

impl SubscriberRunner {
    pub fn new(store: Store, subscriber: Arc<dyn Subscriber>) -> Self {
        Self {
            store,
            batch_size: subscriber.batch_size().max(1),
            subscriber,
            idle_poll: Duration::from_millis(250),
            last_error: Arc::default(),
            throughput: Arc::default(),
            handled_ahead: Arc::default(),
            saved: SavedCursor::default(),
        }
    }

    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn name(&self) -> &'static str {
        self.subscriber.name()
    }

    /// The error of the last failed event, if any.
    pub fn last_error(&self) -> LastError {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Handles the events after the checkpoint, in order, moving the checkpoint past
    /// each one it acts on as soon as it is handled, and past those it passes over at
    /// the next write: at the latest the end of the batch, or for a batch with nothing
    /// to act on, [`WRITE_PASSED_OVER_WITHIN`] later or at the next step that finds
    /// nothing new ([`SavedCursor`]). Stops at the first failure.
    pub async fn step(&self) -> Result<Progress, SubscriberError> {
        self.step_since(None).await
    }

    /// [`SubscriberRunner::step`]; `since`: when a runner following the head was woken
    /// (see [`Store::read_log_tail`]).
    async fn step_since(&self, since: Option<Instant>) -> Result<Progress, SubscriberError> {
        let name = self.name();
        let db = self.store.database();
        let (mut kept, is_kept) = self.saved.start(db, name).await?;
        let mut events = self
            .store
            .read_log_tail(kept.next(), self.batch_size, since)
            .await?;
        if events.is_empty()
            && is_kept
            && let Some(stored) = SavedCursor::moved(db, name, kept.written).await?
        {
            kept = Kept::at(stored);
            events = self
                .store
                .read_log_tail(stored, self.batch_size, since)
                .await?;
        }
        let step_started = Instant::now();
        let Some(last) = events.last() else {
            // Nothing new: the time to write what was passed over.
            match kept.unwritten_place() {
                Some((cursor, unwritten)) => {
                    self.advance(step_started, cursor, 0, unwritten).await?;
                }
                None => self.saved.keep(kept),
            }
            return Ok(Progress {
                handled: 0,
                failed: false,
            });
        };
        if !events.iter().any(|event| self.subscriber.acts_on(event))
            && let Some(ahead) = kept.pass_over(last.cursor, events.len(), step_started)
        {
            self.record(step_started, events.len());
            self.saved.keep(ahead);
            return Ok(Progress {
                handled: events.len(),
                failed: false,
            });
        }
        if self.subscriber.batched() {
            return self.step_batch(&events, kept.unwritten()).await;
        }
        if self.subscriber.concurrency() > 1 {
            return self.step_partitioned(&events, kept.unwritten()).await;
        }
        let mut cursor = kept.next();
        let mut handled = 0;
        // Events passed over in this step, and before it, since the last checkpoint write.
        let mut passed_over = 0;
        let mut unwritten = kept.unwritten();
        for event in events.iter() {
            if !self.subscriber.acts_on(event) {
                cursor = event.cursor;
                passed_over += 1;
                handled += 1;
                continue;
            }
            let started = Instant::now();
            if let Err(error) = self.subscriber.handle(event).await {
                if passed_over + unwritten > 0 {
                    self.advance(step_started, cursor, passed_over, unwritten)
                        .await?;
                }
                tracing::warn!(subscriber = name, position = event.position(), %error, "event handling failed; will retry");
                self.remember_failure(&error);
                return Ok(Progress {
                    handled,
                    failed: true,
                });
            }
            cursor = event.cursor;
            let rate = self.record(started, 1);
            let handled_since = (unwritten + passed_over + 1) as i64;
            self.save(cursor, rate, handled_since).await?;
            passed_over = 0;
            unwritten = 0;
            handled += 1;
        }
        if passed_over + unwritten > 0 {
            self.advance(step_started, cursor, passed_over, unwritten)
                .await?;
        }
        Ok(Progress {
            handled,
            failed: false,
        })
    }

    /// Counts `events` handled since `started`; answers the recent rate.
    fn record(&self, started: Instant, events: usize) -> f64 {
        self.throughput
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(started, events)
    }

    /// Keeps `error` for [`SubscriberRunner::last_error`].
    fn remember_failure(&self, error: &HandlerError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
    }

    /// One batch handled partition by partition, the partitions at the same time: each
    /// in log order, stopping at its first failure. The checkpoint then moves once, to
    /// just before the earliest event that failed (past the whole batch if none did),
    /// counting the `unwritten` events passed over before the batch.
    async fn step_partitioned(
        &self,
        events: &[StoredEvent],
        unwritten: usize,
    ) -> Result<Progress, SubscriberError> {
        let name = self.name();
        let last = &events[events.len() - 1]; // `step` hands over no empty batch
        let started = Instant::now();
        // Each partition's events, as indexes into the batch, in log order.
        let mut partitions: Vec<Vec<usize>> = Vec::new();
        {
            let handled_ahead = self
                .handled_ahead
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut slots: HashMap<Option<String>, usize> = HashMap::new();
            for (index, event) in events.iter().enumerate() {
                if !self.subscriber.acts_on(event) || handled_ahead.contains(&event.event_id) {
                    continue;
                }
                let slot = *slots
                    .entry(self.subscriber.partition(event))
                    .or_insert_with(|| {
                        partitions.push(Vec::new());
                        partitions.len() - 1
                    });
                partitions[slot].push(index);
            }
        }
        let first_failure = futures::stream::iter(partitions)
            .map(|partition| self.handle_partition(events, partition))
            .buffer_unordered(self.subscriber.concurrency())
            .filter_map(std::future::ready)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .min_by_key(|(index, _)| *index);
        let Some((failed_at, error)) = first_failure else {
            self.handled_ahead
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            self.advance(started, last.cursor, events.len(), unwritten)
                .await?;
            return Ok(Progress {
                handled: events.len(),
                failed: false,
            });
        };
        // What stays ahead of the new checkpoint, handled, is not handled again.
        let ahead: HashSet<Uuid> = events[failed_at..].iter().map(|e| e.event_id).collect();
        self.handled_ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id| ahead.contains(id));
        if let Some(before) = failed_at.checked_sub(1).map(|index| &events[index]) {
            self.advance(started, before.cursor, failed_at, unwritten)
                .await?;
        }
        tracing::warn!(subscriber = name, position = events[failed_at].position(), %error, "event handling failed; will retry");
        self.remember_failure(&error);
        Ok(Progress {
            handled: failed_at,
            failed: true,
        })
    }

    /// Handles one partition's events in order; answers the first that failed (its
    /// index in the batch) and why.
    async fn handle_partition(
        &self,
        events: &[StoredEvent],
        partition: Vec<usize>,
    ) -> Option<(usize, HandlerError)> {
        for index in partition {
            let event = &events[index];
            if let Err(error) = self.subscriber.handle(event).await {
                return Some((index, error));
            }
            self.handled_ahead
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(event.event_id);
        }
        None
    }

    /// One batch handled as a whole; the checkpoint moves past it once it is (and past
    /// the `unwritten` events passed over before it).
    async fn step_batch(
        &self,
        events: &[StoredEvent],
        unwritten: usize,
    ) -> Result<Progress, SubscriberError> {
        let name = self.name();
        let last = &events[events.len() - 1]; // `step` hands over no empty batch
        let started = Instant::now();
        if let Err(error) = self.subscriber.handle_batch(events).await {
            tracing::warn!(subscriber = name, first = events[0].position(), %error, "batch handling failed; will retry");
            self.remember_failure(&error);
            return Ok(Progress {
                handled: 0,
                failed: true,
            });
        }
        self.advance(started, last.cursor, events.len(), unwritten)
            .await?;
        Ok(Progress {
            handled: events.len(),
            failed: false,
        })
    }

    /// Moves the checkpoint to `cursor`, past `events` more events handled since
    /// `started` and `unwritten` passed over (and counted) in earlier steps.
    async fn advance(
        &self,
        started: Instant,
        cursor: LogCursor,
        events: usize,
        unwritten: usize,
    ) -> Result<(), SubscriberError> {
        let rate = self.record(started, events);
        self.save(cursor, rate, (events + unwritten) as i64).await
    }

    /// Moves the checkpoint to `cursor` and keeps it for the next step.
    async fn save(
        &self,
        cursor: LogCursor,
        rate: f64,
        handled: i64,
    ) -> Result<(), SubscriberError> {
        save(self.store.derived(), self.name(), cursor, rate, handled).await?;
        self.saved.keep_written(cursor);
        Ok(())
    }

    /// Handles events until `shutdown` fires, holding the subscriber's lease meanwhile.
    /// Failures are retried with backoff; they never end the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.name();
        let lease = format!("subscriber.{name}");
        let runner = &self;
        drive(
            &self.store,
            &lease,
            self.idle_poll,
            &shutdown,
            |wake: Wake| async move {
                if wake.leased_anew {
                    runner.saved.forget();
                }
                match runner.step_since(Some(wake.since)).await {
                    // A full batch: more may be waiting. A shorter one reached the head.
                    Ok(Progress {
                        handled,
                        failed: false,
                    }) if handled >= runner.batch_size as usize => Step::Busy,
                    Ok(Progress { failed: false, .. }) => Step::Idle,
                    Ok(Progress { failed: true, .. }) => Step::Failed,
                    Err(error) => {
                        tracing::warn!(subscriber = name, %error, "subscriber step failed");
                        Step::Failed
                    }
                }
            },
        )
        .await;
    }
}

/// What one step of a reader of the log came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It read a full batch: more may be waiting, step again at once.
    Busy,
    /// It reached the head of the log (read a shorter batch, or nothing): wait for an
    /// append (or the idle poll). Stepping again at once would mostly read nothing.
    Idle,
    /// It failed: retry after a backoff that grows with each failure in a row.
    Failed,
}

/// How often a lease holder checks that its session still holds the lock.
const LEASE_CHECK: Duration = Duration::from_secs(2);

/// How long an idle reader waits after it is told of an append before it reads the log:
/// the appends that arrive meanwhile are applied in the same batch. Under load every
/// append would otherwise wake every reader into a transaction of its own; this trades
/// a few milliseconds of read-model lag for fewer, larger batches.
pub const GATHER: Duration = Duration::from_millis(20);

/// Why a step of [`drive`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Wake {
    /// The first step since the lease was taken: what the reader kept from an earlier
    /// tenure may have been moved on by another instance meanwhile.
    pub leased_anew: bool,
    /// The step must see every event committed before this instant (the reader was
    /// woken then); see [`Store::read_log_tail`].
    pub since: Instant,
}

/// Runs `step` until `shutdown` fires, while holding the lease `lease`: one instance at
/// a time runs it. A holder that finds its session gone (the lock released) stops and
/// queues for the lease again.
pub async fn drive<F, Fut>(
    store: &Store,
    lease: &str,
    idle_poll: Duration,
    shutdown: &CancellationToken,
    mut step: F,
) where
    F: FnMut(Wake) -> Fut,
    Fut: Future<Output = Step>,
{
    while let Some(mut held) = Lease::acquire(store.database(), lease, shutdown).await {
        tracing::info!(lease, "started");
        let mut appended = store.subscribe_appends();
        let mut wake = Wake {
            leased_anew: true,
            since: Instant::now(),
        };
        let mut failures: u32 = 0;
        let mut checked = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                tracing::info!(lease, "stopped");
                return;
            }
            if checked.elapsed() >= LEASE_CHECK {
                checked = tokio::time::Instant::now();
                if !held.is_held().await {
                    tracing::warn!(lease, "lease lost; standing by");
                    break;
                }
            }
            let pause = match step(wake).await {
                Step::Busy => {
                    failures = 0;
                    continue;
                }
                Step::Idle => {
                    failures = 0;
                    idle_poll
                }
                Step::Failed => {
                    failures = failures.saturating_add(1);
                    backoff(failures)
                }
            };
            wake.leased_anew = false;
            tokio::select! {
                () = shutdown.cancelled() => {}
                changed = appended.changed(), if failures == 0 => {
                    // Told of an append: it was committed before now.
                    wake.since = Instant::now();
                    tokio::time::sleep(if changed.is_ok() { GATHER } else { pause }).await;
                }
                () = tokio::time::sleep(pause) => wake.since = Instant::now(),
            }
        }
    }
}

/// Events per second over the batches of the last few seconds.
#[derive(Debug, Default)]
pub struct Throughput {
    /// (started, finished, events) of each recent batch.
    batches: std::collections::VecDeque<(Instant, Instant, usize)>,
}

impl Throughput {
    const WINDOW: Duration = Duration::from_secs(10);

    /// Counts a batch of `events` that started at `started` and just finished; returns
    /// the rate over the window.
    pub fn record(&mut self, started: Instant, events: usize) -> f64 {
        let now = Instant::now();
        while self
            .batches
            .front()
            .is_some_and(|(_, finished, _)| now.duration_since(*finished) > Self::WINDOW)
        {
            self.batches.pop_front();
        }
        self.batches.push_back((started, now, events));
        self.rate_at(now, started, 0)
    }

    /// The rate over the window were a batch of `events` that started at `started`
    /// counted now, without counting it: for a batch that may yet roll back.
    pub fn rate_with(&self, started: Instant, events: usize) -> f64 {
        self.rate_at(Instant::now(), started, events)
    }

    /// The rate at `now` over the window's batches and `events` more since `started`.
    fn rate_at(&self, now: Instant, started: Instant, events: usize) -> f64 {
        let recent = || {
            self.batches
                .iter()
                .filter(move |(_, finished, _)| now.duration_since(*finished) <= Self::WINDOW)
        };
        let first = recent().next().map_or(started, |(start, _, _)| *start);
        let total: usize = recent().map(|(_, _, n)| n).sum::<usize>() + events;
        total as f64
            / now
                .duration_since(first.min(started))
                .as_secs_f64()
                .max(1e-3)
    }
}

/// Makes one call to an outside service, inside a client span `{connector} {operation}`,
/// and counts it (`shopagent_connector_calls_total`) by which service, which operation
/// and the outcome `outcome` names: `ok`, `unavailable` (worth retrying) or `refused`.
pub async fn call_out<T, E>(
    connector: &'static str,
    operation: &'static str,
    call: impl Future<Output = Result<T, E>>,
    outcome: impl FnOnce(&Result<T, E>) -> &'static str,
) -> Result<T, E> {
    let span = tracing::info_span!(
        "connector call",
        otel.name = %format_args!("{connector} {operation}"),
        otel.kind = "client",
        connector,
        operation,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let result = call.instrument(span.clone()).await;
    let outcome = outcome(&result);
    span.record("outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
    metrics::counter!(
        "shopagent_connector_calls_total",
        "connector" => connector,
        "operation" => operation,
        "outcome" => outcome
    )
    .increment(1);
    result
}

/// The outcome label of a call to a port that answers with a [`CallError`].
///
/// [`CallError`]: shopagent_domain::ports::CallError
pub fn call_outcome<T>(result: &Result<T, shopagent_domain::ports::CallError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(shopagent_domain::ports::CallError::Unavailable(_)) => "unavailable",
        Err(shopagent_domain::ports::CallError::Refused(_)) => "refused",
    }
}

/// Pause before retrying after `failures` consecutive failures: 200 ms doubling to 30 s.
/// Shared by every reader of the log (projections too).
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(9))).min(Duration::from_secs(30))
}

/// The checkpoint as a reader last wrote it, so that its next step starts there without
/// reading it back: a round trip saved on every batch. Taken at the start of a step and
/// kept again once the step wrote its checkpoint, so a step that fails leaves it empty
/// and the next step reads the stored checkpoint. A step that finds nothing after the
/// kept cursor reads the stored checkpoint too: that is how a reader notices a
/// checkpoint moved by someone else (a projection rewound by ops), and it costs only
/// steps that had nothing to do. Forgotten whenever the reader's lease is taken anew.
///
/// It also keeps how far the reader has read past that checkpoint over events it passes
/// over ([`Kept::pass_over`]): a batch with nothing for the reader moves it on without
/// a write, and the checkpoint is written past those events with the reader's next
/// write, at the latest [`WRITE_PASSED_OVER_WITHIN`] after the first of them, or at its
/// next step that finds nothing new. Under a load of events a reader does not act on
/// (a cart's lines, for the orders hub), that saves a transaction per batch and
/// reader; a crash meanwhile only makes the next holder read those events again.
#[derive(Debug, Clone, Default)]
pub struct SavedCursor(Arc<std::sync::Mutex<Option<Kept>>>);

/// What a reader keeps of its place in the log between steps ([`SavedCursor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// The checkpoint as the reader last wrote (or read) it.
    pub written: LogCursor,
    /// Read past `written` over events the reader passes over, not yet written.
    passed: Option<PassedOver>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassedOver {
    cursor: LogCursor,
    events: usize,
    /// When the first of them was passed over without a write.
    since: Instant,
}

/// How long a reader may keep events it passed over unwritten in its checkpoint: how
/// far the stored checkpoint (what ops see, where another instance would start) may
/// trail the reader under a load of events it does not act on.
pub const WRITE_PASSED_OVER_WITHIN: Duration = Duration::from_secs(1);

impl Kept {
    /// At the checkpoint `written`, with nothing passed over since.
    pub fn at(written: LogCursor) -> Self {
        Self {
            written,
            passed: None,
        }
    }

    /// Where the reader's next read starts.
    pub fn next(&self) -> LogCursor {
        self.passed.map_or(self.written, |passed| passed.cursor)
    }

    /// How many events the reader passed over that its stored checkpoint does not count
    /// yet.
    pub fn unwritten(&self) -> usize {
        self.passed.map_or(0, |passed| passed.events)
    }

    /// The place past the unwritten events, if there are any: what the checkpoint must
    /// be moved to when the reader next finds nothing new.
    pub fn unwritten_place(&self) -> Option<(LogCursor, usize)> {
        self.passed.map(|passed| (passed.cursor, passed.events))
    }

    /// `self` moved past `events` more events, to `cursor`, none of which the reader
    /// acts on; `None` when the checkpoint must be written now instead (the first
    /// events passed over have waited [`WRITE_PASSED_OVER_WITHIN`]).
    pub fn pass_over(self, cursor: LogCursor, events: usize, now: Instant) -> Option<Self> {
        let (before, since) = self
            .passed
            .map_or((0, now), |passed| (passed.events, passed.since));
        (now.saturating_duration_since(since) < WRITE_PASSED_OVER_WITHIN).then_some(Self {
            written: self.written,
            passed: Some(PassedOver {
                cursor,
                events: before + events,
                since,
            }),
        })
    }
}

impl SavedCursor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the reader `name`'s next step starts: what it kept (leaving nothing until
    /// the next [`SavedCursor::keep`]), else the stored checkpoint; and whether it was
    /// the kept one.
    pub async fn start(&self, db: &Database, name: &str) -> Result<(Kept, bool), sqlx::Error> {
        let kept = self.lock().take();
        match kept {
            Some(kept) => Ok((kept, true)),
            None => Ok((Kept::at(checkpoint(db, name).await?), false)),
        }
    }

    /// The stored checkpoint of `name`, when it is no longer `written`: for a step that
    /// found nothing after its kept cursor.
    pub async fn moved(
        db: &Database,
        name: &str,
        written: LogCursor,
    ) -> Result<Option<LogCursor>, sqlx::Error> {
        let stored = checkpoint(db, name).await?;
        Ok((stored != written).then_some(stored))
    }

    /// Keeps `kept` for the next step.
    pub fn keep(&self, kept: Kept) {
        *self.lock() = Some(kept);
    }

    /// Keeps `cursor`, just written as the reader's checkpoint.
    pub fn keep_written(&self, cursor: LogCursor) {
        self.keep(Kept::at(cursor));
    }

    pub fn forget(&self) {
        *self.lock() = None;
    }
}

/// The cursor stored for the reader `name` (projection or subscriber), or the start.
pub async fn checkpoint(db: &Database, name: &str) -> Result<LogCursor, sqlx::Error> {
    const SQL: &str = "SELECT txid, position FROM projection_checkpoints WHERE name = $1";
    let row: Option<(i64, i64)> = match db {
        Database::Postgres(pool) => sqlx::query_as(SQL).bind(name).fetch_optional(pool).await?,
        Database::Sqlite(pool) => sqlx::query_as(SQL).bind(name).fetch_optional(pool).await?,
    };
    Ok(row.map_or(LogCursor::START, |(txid, position)| LogCursor {
        txid,
        position,
    }))
}

/// Moves the checkpoint to `cursor`, counting `handled` more events.
async fn save(
    db: &Database,
    name: &str,
    cursor: LogCursor,
    rate: f64,
    handled: i64,
) -> Result<(), SubscriberError> {
    const SQL: &str = "INSERT INTO projection_checkpoints (name, txid, position, events_applied, updated_at, events_per_second)
         VALUES ($1, $2, $3, $6, $4, $5)
         ON CONFLICT (name) DO UPDATE SET txid = excluded.txid, position = excluded.position,
             events_applied = projection_checkpoints.events_applied + excluded.events_applied,
             updated_at = excluded.updated_at, events_per_second = excluded.events_per_second";
    let now = format_timestamp(OffsetDateTime::now_utc());
    match db {
        Database::Postgres(pool) => sqlx::query(SQL)
            .bind(name)
            .bind(cursor.txid)
            .bind(cursor.position)
            .bind(&now)
            .bind(rate)
            .bind(handled)
            .execute(pool)
            .await
            .map(drop)?,
        Database::Sqlite(pool) => sqlx::query(SQL)
            .bind(name)
            .bind(cursor.txid)
            .bind(cursor.position)
            .bind(&now)
            .bind(rate)
            .bind(handled)
            .execute(pool)
            .await
            .map(drop)?,
    }
    Ok(())
}

/// Runs `work` holding the lock `name` across every instance: a PostgreSQL
/// transaction-scoped advisory lock (others wait for it; a dead instance's session, and
/// so its lock, ends with it). On SQLite, one process, `work` runs at once.
pub async fn exclusively<T>(
    db: &Database,
    name: &str,
    work: impl Future<Output = T>,
) -> Result<T, StoreError> {
    let Database::Postgres(pool) = db else {
        return Ok(work.await);
    };
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("shopagent.{name}"))
        .execute(&mut *transaction)
        .await?;
    let outcome = work.await;
    transaction.commit().await?;
    Ok(outcome)
}

/// Exclusive right to run a reader of the log (a subscriber, a projection's runner): a
/// PostgreSQL session advisory lock held on a connection detached from the pool, so
/// that dropping the lease closes the session and releases the lock (a pooled session
/// would keep it). If the instance dies, its session ends and another instance's
/// [`Lease::acquire`] gets the lock within a second. Nothing on SQLite (one process).
#[derive(Debug)]
pub struct Lease {
    connection: Option<PgConnection>,
}

impl Lease {
    /// Waits until the lease `name` is free or `shutdown` fires (then `None`).
    pub async fn acquire(db: &Database, name: &str, shutdown: &CancellationToken) -> Option<Self> {
        let Database::Postgres(pool) = db else {
            return Some(Self { connection: None });
        };
        let mut waiting_logged = false;
        loop {
            let attempt = async {
                let mut connection = pool.acquire().await?;
                let locked: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(format!("shopagent.{name}"))
                        .fetch_one(&mut *connection)
                        .await?;
                Ok::<_, sqlx::Error>(locked.then(|| PoolConnection::detach(connection)))
            };
            match attempt.await {
                Ok(Some(connection)) => {
                    tracing::info!(lease = name, "lease taken");
                    return Some(Self {
                        connection: Some(connection),
                    });
                }
                Ok(None) if !waiting_logged => {
                    tracing::info!(
                        lease = name,
                        "another instance holds this lease; standing by"
                    );
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(lease = name, %error, "cannot take the lease")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Whether the session holding the lock is still alive. A session the server ended
    /// (or a broken connection) has released the lock: another instance may hold it.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.connection {
            Some(connection) => sqlx::query("SELECT 1")
                .execute(&mut *connection)
                .await
                .is_ok(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: i64) -> LogCursor {
        LogCursor { txid: 1, position }
    }

    #[test]
    fn a_rate_asked_for_a_batch_does_not_count_it() {
        let mut throughput = Throughput::default();
        let started = Instant::now() - Duration::from_secs(2);
        let with_batch = throughput.rate_with(started, 100);
        assert!(with_batch > 40.0, "{with_batch}");
        assert_eq!(throughput.rate_with(started, 0), 0.0);
        let recorded = throughput.record(started, 100);
        assert!(recorded > 40.0 && recorded <= with_batch, "{recorded}");
        assert!(throughput.rate_with(started, 0) > 40.0);
    }

    #[test]
    fn events_passed_over_are_kept_unwritten_and_counted_together() {
        let now = Instant::now();
        let kept = Kept::at(at(10));
        let once = kept.pass_over(at(20), 10, now).expect("kept unwritten");
        let twice = once
            .pass_over(at(25), 5, now + Duration::from_millis(500))
            .expect("kept unwritten");
        assert_eq!(twice.written, at(10));
        assert_eq!(twice.next(), at(25));
        assert_eq!(twice.unwritten_place(), Some((at(25), 15)));
    }

    #[test]
    fn events_passed_over_are_written_within_the_limit_of_the_first() {
        let first = Instant::now();
        let kept = Kept::at(at(10))
            .pass_over(at(20), 10, first)
            .expect("kept unwritten");
        assert_eq!(
            kept.pass_over(at(30), 10, first + WRITE_PASSED_OVER_WITHIN),
            None,
            "the checkpoint must be written now"
        );
    }

    #[test]
    fn a_reader_with_nothing_passed_over_starts_at_its_checkpoint() {
        let kept = Kept::at(at(10));
        assert_eq!(kept.next(), at(10));
        assert_eq!((kept.unwritten(), kept.unwritten_place()), (0, None));
    }
}
