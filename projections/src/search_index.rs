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

use std::sync::Arc;
use std::time::Duration;

use shopagent_commands::log::LogFilter;
use shopagent_commands::subscriber::{Step, drive};
use shopagent_commands::{LogCursor, Store, StoreError, StoredEvent};
use shopagent_domain::ids::{MerchantId, OfferId};
use shopagent_domain::offer::OfferEvent;
use shopagent_domain::offer::search::IndexedOffer;
use shopagent_domain::ports::{IndexError, OfferIndex};
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

/// Keeps an [`OfferIndex`] from the log.
#[derive(Clone)]
pub struct SearchIndexer {
    store: Store,
    index: Arc<dyn OfferIndex>,
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
            index,
            batch_size: 1_000,
        }
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

    /// Indexes the next batch of offer events; how many it indexed.
    pub async fn step(&self) -> Result<usize, IndexerError> {
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
        }
        let filter = LogFilter {
            aggregate_type: Some("offer".into()),
            ..LogFilter::default()
        };
        let events = self
            .store
            .read_log_matching(after, self.batch_size, &filter)
            .await?;
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
        Ok(events.len())
    }

    /// Indexes every offer event committed before this call.
    pub async fn catch_up(&self) -> Result<(), IndexerError> {
        let head = self.store.head_position().await?;
        let filter = LogFilter {
            aggregate_type: Some("offer".into()),
            ..LogFilter::default()
        };
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
            if self.step().await? == 0 {
                // Committed but not yet readable (PostgreSQL): wait for it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
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
        drive(
            &self.store,
            &lease,
            Duration::from_millis(250),
            &shutdown,
            || async {
                match self.step().await {
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
