//! `search_index`: the offers search index, kept from the log's offer events.
//!
//! The index is outside the database, so its checkpoint lives in the index, committed
//! with the documents it covers (`OfferIndex::apply`): the index is never ahead of its
//! checkpoint nor behind it, across crashes. An embedded index belongs to its process —
//! each instance keeps its own, and an index in memory starts from the beginning of the
//! log — so its indexer's lease is the process's alone; an index on a search server is
//! kept by one instance at a time. Listing and updating store
//! the offer at its version (an older version never replaces a newer); withdrawing
//! removes it.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use shopagent_commands::log::LogFilter;
use shopagent_commands::subscriber::{Step, Wake, drive};
use shopagent_commands::{LogCursor, Store, StoreError, StoredEvent};
use shopagent_domain::ids::{MerchantId, OfferId};
use shopagent_domain::offer::OfferEvent;
use shopagent_domain::offer::search::{IndexedOffer, OfferQuery, SearchPage};
use shopagent_domain::ports::{IndexError, IndexGenerations, OfferIndex};
use time::OffsetDateTime;

use crate::runner::{ProjectionStatus, RebuildStatus};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the index's checkpoint {0:?} is not one of this indexer's")]
    Checkpoint(String),
}

/// The live offers index: what searches read and the indexer writes, replaced at once
/// when a rebuild promotes a new generation.
struct LiveIndex {
    current: std::sync::RwLock<Arc<dyn OfferIndex>>,
}

impl LiveIndex {
    fn new(index: Arc<dyn OfferIndex>) -> Self {
        Self {
            current: std::sync::RwLock::new(index),
        }
    }

    fn current(&self) -> Arc<dyn OfferIndex> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, index: Arc<dyn OfferIndex>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = index;
    }
}

#[async_trait::async_trait]
impl OfferIndex for LiveIndex {
    async fn apply(
        &self,
        offers: Vec<IndexedOffer>,
        withdrawn: Vec<String>,
        checkpoint: Option<String>,
    ) -> Result<(), IndexError> {
        self.current().apply(offers, withdrawn, checkpoint).await
    }

    async fn checkpoint(&self) -> Result<Option<String>, IndexError> {
        self.current().checkpoint().await
    }

    async fn search(&self, query: &OfferQuery) -> Result<SearchPage, IndexError> {
        self.current().search(query).await
    }

    async fn clear(&self) -> Result<(), IndexError> {
        self.current().clear().await
    }

    fn shared(&self) -> bool {
        self.current().shared()
    }
}

/// What this process's indexer has done, for the ops status and the metrics.
#[derive(Debug, Default)]
struct Activity {
    events_applied: i64,
    events_per_second: f64,
    updated_at: Option<OffsetDateTime>,
    error: Option<String>,
    /// Position a rebuild's new generation has reached, while one runs.
    rebuild_position: Option<i64>,
}

/// Why a rebuild did not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of the search index is already running")]
    AlreadyRunning,
    #[error("this search index has no generations to rebuild into")]
    NoGenerations,
    #[error("the rebuild was stopped")]
    Stopped,
    #[error(transparent)]
    Indexer(#[from] IndexerError),
}

/// Keeps an [`OfferIndex`] from the log, and rebuilds it beside the live one.
#[derive(Clone)]
pub struct SearchIndexer {
    store: Store,
    index: Arc<LiveIndex>,
    generations: Option<Arc<dyn IndexGenerations>>,
    /// Held by each step, and by a rebuild while it promotes: nothing is written to a
    /// generation being retired (for a shared index, a lock across instances instead).
    gate: Arc<tokio::sync::Mutex<()>>,
    activity: Arc<Mutex<Activity>>,
    rebuilding: Arc<std::sync::atomic::AtomicBool>,
    /// How far this process has read the log: past the index's checkpoint when the
    /// events since are not offer events. Without it each step would read again every
    /// event since the last offer event, a cost that grows with the log. Kept in memory
    /// only: the index's checkpoint moves with offer events alone (a write to the
    /// index), so after a restart the first step reads from the checkpoint again.
    scanned: Arc<Mutex<LogCursor>>,
    batch_size: u32,
}

impl std::fmt::Debug for SearchIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndexer").finish_non_exhaustive()
    }
}

fn encode(cursor: LogCursor) -> String {
    format!("{}:{}", cursor.txid, cursor.position)
}

fn decode(checkpoint: &str) -> Option<LogCursor> {
    let (txid, position) = checkpoint.split_once(':')?;
    Some(LogCursor {
        txid: txid.parse().ok()?,
        position: position.parse().ok()?,
    })
}

/// The merchant and offer id an offer stream (`{tenant}/offer/{merchant}/{offer}`) names.
fn listing_of(event: &StoredEvent) -> Option<(MerchantId, OfferId)> {
    let rest = event
        .aggregate_id
        .strip_prefix(&event.metadata.tenant)?
        .strip_prefix("/offer/")?;
    let (merchant, offer) = rest.split_once('/')?;
    Some((
        MerchantId::parse(merchant).ok()?,
        OfferId::parse(offer).ok()?,
    ))
}

impl SearchIndexer {
    pub const NAME: &'static str = "search_index";

    pub fn new(store: Store, index: Arc<dyn OfferIndex>) -> Self {
        Self {
            store,
            index: Arc::new(LiveIndex::new(index)),
            generations: None,
            gate: Arc::default(),
            activity: Arc::default(),
            rebuilding: Arc::default(),
            scanned: Arc::default(),
            batch_size: 1_000,
        }
    }

    /// Where a rebuild makes the index's next generation.
    pub fn with_generations(mut self, generations: Arc<dyn IndexGenerations>) -> Self {
        self.generations = Some(generations);
        self
    }

    /// The live index: searches read it, through rebuilds.
    pub fn index(&self) -> Arc<dyn OfferIndex> {
        Arc::clone(&self.index) as Arc<dyn OfferIndex>
    }

    fn scanned(&self) -> std::sync::MutexGuard<'_, LogCursor> {
        self.scanned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn with_batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Where the index is in the log.
    pub async fn position(&self) -> Result<LogCursor, IndexerError> {
        match self.index.checkpoint().await? {
            None => Ok(LogCursor::START),
            Some(checkpoint) => decode(&checkpoint).ok_or(IndexerError::Checkpoint(checkpoint)),
        }
    }

    /// Runs `work` alone among the writers of the live index: on this process for an
    /// embedded index; on every instance for a shared one, whose indexer may run on one
    /// instance while a rebuild promotes on another.
    async fn gated<T>(
        &self,
        work: impl Future<Output = Result<T, IndexerError>>,
    ) -> Result<T, IndexerError> {
        if self.index.shared() {
            shopagent_commands::subscriber::exclusively(
                self.store.database(),
                &format!("{}.gate", Self::NAME),
                work,
            )
            .await?
        } else {
            let _gate = self.gate.lock().await;
            work.await
        }
    }

    /// Indexes the next batch of offer events; how many it indexed.
    pub async fn step(&self) -> Result<usize, IndexerError> {
        self.step_since(None).await
    }

    /// [`SearchIndexer::step`]; `since`: when an indexer following the head was woken
    /// (see [`shopagent_commands::Store::read_log_tail`]).
    async fn step_since(&self, since: Option<Instant>) -> Result<usize, IndexerError> {
        let started = Instant::now();
        let outcome = self.gated(self.step_ungated(since)).await;
        let mut activity = self.activity();
        match &outcome {
            Ok(0) => activity.error = None,
            Ok(indexed) => {
                let indexed = *indexed as i64;
                activity.events_applied += indexed;
                activity.events_per_second =
                    indexed as f64 / started.elapsed().as_secs_f64().max(1e-6);
                activity.updated_at = Some(OffsetDateTime::now_utc());
                activity.error = None;
            }
            Err(error) => activity.error = Some(error.to_string()),
        }
        outcome
    }

    async fn step_ungated(&self, since: Option<Instant>) -> Result<usize, IndexerError> {
        let mut after = self.position().await?;
        if after.position > 0 && after.position > self.store.head_position().await? {
            // The index is ahead of the log: it was built from another log (a database
            // reset or replaced under a kept data directory). Start it over.
            tracing::warn!(
                indexer = Self::NAME,
                position = after.position,
                "search index is ahead of the log; rebuilding it from the start"
            );
            self.index.clear().await?;
            after = LogCursor::START;
            *self.scanned() = LogCursor::START;
        }
        let filter = offer_events();
        // Every event is read once; the offer events among them are indexed.
        let (events, page_end) = loop {
            let start = after.max(*self.scanned());
            let read = self
                .store
                .read_log_tail(start, self.batch_size, since)
                .await?;
            let Some(last) = read.last() else {
                return Ok(0);
            };
            let at_head = read.len() < self.batch_size as usize;
            let offers: Vec<StoredEvent> =
                read.iter().filter(|e| filter.matches(e)).cloned().collect();
            if !offers.is_empty() {
                // Passed once they are in the index: an apply that fails reads them again.
                break (offers, last.cursor);
            }
            *self.scanned() = last.cursor;
            // A shorter page reached the head: reading again would find nothing.
            if at_head {
                return Ok(0);
            }
        };
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let span = tracing::info_span!(
            "projection batch",
            otel.name = %format_args!("{} batch", Self::NAME),
            projection = Self::NAME,
            events = events.len(),
        );
        shopagent_commands::trace::join_batch(&span, &events);
        let (offers, withdrawn) = changes(&events);
        self.index
            .apply(offers, withdrawn, Some(encode(last.cursor)))
            .instrument(span)
            .await?;
        *self.scanned() = page_end;
        Ok(events.len())
    }

    /// Indexes every offer event committed before this call.
    pub async fn catch_up(&self) -> Result<(), IndexerError> {
        self.gated(self.catch_up_ungated()).await
    }

    async fn catch_up_ungated(&self) -> Result<(), IndexerError> {
        let head = self.store.head_position().await?;
        let filter = offer_events();
        loop {
            let position = self.position().await?;
            if self
                .store
                .count_between_matching(position, head, &filter)
                .await?
                == 0
            {
                return Ok(());
            }
            if self.step_ungated(None).await? == 0 {
                // Committed but not yet readable (PostgreSQL): wait for it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Where the index stands, in the shape of a projection's status: its checkpoint
    /// against the log's offer events (the lag counts those alone), and what this
    /// process's indexer has done. It is never `paused`.
    pub async fn status(&self) -> Result<ProjectionStatus, IndexerError> {
        let position = self.position().await?;
        let head = self.store.head_position().await?;
        let filter = offer_events();
        let lag_events = self
            .store
            .count_between_matching(position, head, &filter)
            .await?;
        // Found through the log's commit order, which is no index of offer events: with
        // none waiting, the read would pass every event after the checkpoint.
        let oldest = match lag_events {
            0 => Vec::new(),
            _ => self.store.read_log_matching(position, 1, &filter).await?,
        };
        let lag_seconds = oldest.first().map_or(0.0, |event| {
            (OffsetDateTime::now_utc() - event.recorded_at)
                .as_seconds_f64()
                .max(0.0)
        });
        let activity = self.activity();
        let recent = activity
            .updated_at
            .is_some_and(|at| OffsetDateTime::now_utc() - at < time::Duration::seconds(10));
        Ok(ProjectionStatus {
            name: Self::NAME.to_owned(),
            state: match (&activity.error, activity.rebuild_position) {
                (Some(_), _) => "failing",
                (None, Some(_)) => "rebuilding",
                (None, None) => "running",
            },
            checkpoint_position: position.position,
            head_position: head,
            lag_events,
            lag_seconds,
            events_applied: activity.events_applied,
            events_per_second: if recent {
                activity.events_per_second
            } else {
                0.0
            },
            updated_at: activity
                .updated_at
                .and_then(|at| {
                    at.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default(),
            error: activity.error.clone(),
            failed_position: None,
            rebuild: activity.rebuild_position.map(|position| RebuildStatus {
                position,
                events_per_second: 0.0,
            }),
        })
    }

    /// Claims the one rebuild this indexer may run at a time.
    pub fn claim_rebuild(&self) -> Result<(), RebuildError> {
        if self.generations.is_none() {
            return Err(RebuildError::NoGenerations);
        }
        self.rebuilding
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|_| RebuildError::AlreadyRunning)
    }

    /// Rebuilds the index from the start of the log into a new generation while the
    /// live one keeps serving and indexing, then promotes it: searches move to the new
    /// one at once. Needs [`Self::claim_rebuild`] first.
    pub async fn rebuild_claimed(&self, stop: &CancellationToken) -> Result<(), RebuildError> {
        let outcome = self.rebuild_into_next(stop).await;
        self.activity().rebuild_position = None;
        self.rebuilding
            .store(false, std::sync::atomic::Ordering::Release);
        match &outcome {
            Ok(()) => tracing::info!(indexer = Self::NAME, "search index rebuilt"),
            Err(error) => {
                tracing::error!(indexer = Self::NAME, %error, "search index rebuild failed")
            }
        }
        outcome
    }

    async fn rebuild_into_next(&self, stop: &CancellationToken) -> Result<(), RebuildError> {
        let generations = self
            .generations
            .clone()
            .ok_or(RebuildError::NoGenerations)?;
        let next = generations
            .create_next()
            .await
            .map_err(IndexerError::from)?;
        let builder = SearchIndexer::new(self.store.clone(), next).with_batch_size(self.batch_size);
        self.activity().rebuild_position = Some(0);
        // Most of the log while the live generation keeps up on its own.
        loop {
            if stop.is_cancelled() {
                return Err(RebuildError::Stopped);
            }
            let indexed = builder.step_ungated(None).await?;
            self.activity().rebuild_position = Some(builder.position().await?.position);
            if indexed == 0 {
                break;
            }
        }
        // The rest with the live index's writers held off, then the switch.
        self.gated(async {
            builder.catch_up_ungated().await?;
            let promoted = generations.promote().await?;
            self.index.replace(promoted);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Indexes until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        // An index on a server is kept by one instance at a time; each process keeps its
        // own embedded index, under a lease of its own.
        let lease = if self.index.shared() {
            Self::NAME.to_owned()
        } else {
            format!("{}.{}", Self::NAME, uuid::Uuid::new_v4())
        };
        let indexer = &self;
        drive(
            &self.store,
            &lease,
            Duration::from_millis(250),
            &shutdown,
            |wake: Wake| async move {
                match indexer.step_since(Some(wake.since)).await {
                    Ok(0) => Step::Idle,
                    Ok(_) => Step::Busy,
                    Err(error) => {
                        tracing::warn!(indexer = Self::NAME, %error, "indexing failed; will retry");
                        Step::Failed
                    }
                }
            },
        )
        .await;
    }
}

/// The events the index is kept from.
fn offer_events() -> LogFilter {
    LogFilter {
        aggregate_type: Some("offer".into()),
        ..LogFilter::default()
    }
}

/// The offers to store and the ids to remove, for a batch of offer events.
fn changes(events: &[StoredEvent]) -> (Vec<IndexedOffer>, Vec<String>) {
    let mut offers = Vec::new();
    let mut withdrawn = Vec::new();
    for event in events {
        let Some((merchant, offer_id)) = listing_of(event) else {
            tracing::warn!(stream = %event.aggregate_id, "offer event outside an offer stream; not indexed");
            continue;
        };
        match serde_json::from_value::<OfferEvent>(event.payload.clone()) {
            Ok(
                OfferEvent::OfferListed {
                    record, citation, ..
                }
                | OfferEvent::OfferUpdated {
                    record, citation, ..
                },
            ) => {
                withdrawn.retain(|id| id != &event.aggregate_id);
                offers.push(IndexedOffer::new(
                    event.aggregate_id.clone(),
                    event.metadata.tenant.clone(),
                    merchant,
                    offer_id,
                    event.sequence,
                    *record,
                    citation.map(|c| c.url),
                ));
            }
            Ok(OfferEvent::OfferWithdrawn { .. }) => {
                offers.retain(|offer: &IndexedOffer| offer.id != event.aggregate_id);
                withdrawn.push(event.aggregate_id.clone());
            }
            Err(error) => {
                tracing::error!(position = event.position(), %error, "unreadable offer event skipped");
            }
        }
    }
    (offers, withdrawn)
}
