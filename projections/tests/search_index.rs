//! The search indexer against an index that fails: what it could not apply it reads
//! again, so no offer event is passed over, on both backends.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use shopagent_commands::CommandBus;
use shopagent_commands::test_support::TestStore;
use shopagent_domain::EventMetadata;
use shopagent_domain::ids::{MerchantId, OfferId};
use shopagent_domain::offer::normalize::{RawOffer, normalize};
use shopagent_domain::offer::search::{IndexedOffer, OfferQuery, SearchPage};
use shopagent_domain::offer::{Offer, OfferCommand, OfferSource};
use shopagent_domain::ports::{IndexError, OfferIndex};
use shopagent_projections::SearchIndexer;

shopagent_commands::on_both_backends!(
    offers_an_apply_failed_to_index_are_indexed_when_it_is_tried_again,
);

/// A search engine that keeps the ids of what it holds and, when told to, refuses the
/// next apply (the server is down).
#[derive(Debug, Default)]
struct FlakyIndex {
    offers: Mutex<Vec<String>>,
    checkpoint: Mutex<Option<String>>,
    refuse_next: AtomicBool,
}

#[async_trait::async_trait]
impl OfferIndex for FlakyIndex {
    async fn apply(
        &self,
        offers: Vec<IndexedOffer>,
        withdrawn: Vec<String>,
        checkpoint: Option<String>,
    ) -> Result<(), IndexError> {
        if self.refuse_next.swap(false, Ordering::SeqCst) {
            return Err(IndexError::Unavailable("connection refused".into()));
        }
        let mut held = self.offers.lock().expect("not poisoned");
        held.retain(|id| !withdrawn.contains(id));
        for offer in offers {
            if !held.contains(&offer.id) {
                held.push(offer.id);
            }
        }
        if checkpoint.is_some() {
            *self.checkpoint.lock().expect("not poisoned") = checkpoint;
        }
        Ok(())
    }

    async fn checkpoint(&self) -> Result<Option<String>, IndexError> {
        Ok(self.checkpoint.lock().expect("not poisoned").clone())
    }

    async fn search(&self, _query: &OfferQuery) -> Result<SearchPage, IndexError> {
        Err(IndexError::Unavailable("not searched here".into()))
    }

    async fn clear(&self) -> Result<(), IndexError> {
        self.offers.lock().expect("not poisoned").clear();
        *self.checkpoint.lock().expect("not poisoned") = None;
        Ok(())
    }
}

/// Lists offer `sku` of `merchant` in the log; answers its stream.
async fn list_offer(offers: &CommandBus<Offer>, merchant: &str, sku: &str) -> String {
    let raw = RawOffer {
        title: Some(format!("Trail tent {sku}")),
        price: Some("129.00".into()),
        currency: Some("USD".into()),
        ..RawOffer::default()
    };
    let record = normalize(&raw).record.expect("a title and a price");
    let stream = format!("acme/offer/{merchant}/{sku}");
    let command = OfferCommand::Ingest {
        merchant: MerchantId::parse(merchant).expect("merchant"),
        offer_id: OfferId::parse(sku).expect("offer"),
        record: Box::new(record),
        citation: None,
        source: OfferSource::Feed,
        at: time::OffsetDateTime::now_utc(),
    };
    offers
        .execute(&stream, command, EventMetadata::new("acme", "ops:test"))
        .await
        .expect("list the offer");
    stream
}

async fn offers_an_apply_failed_to_index_are_indexed_when_it_is_tried_again(test: &TestStore) {
    let offers = CommandBus::<Offer>::new(test.store.clone());
    let mut listed = Vec::new();
    for sku in ["sku-1", "sku-2", "sku-3"] {
        listed.push(list_offer(&offers, "outdoor-co", sku).await);
    }
    let index = Arc::new(FlakyIndex::default());
    let indexer = SearchIndexer::new(test.store.clone(), index.clone());

    index.refuse_next.store(true, Ordering::SeqCst);
    assert!(indexer.step().await.is_err(), "the index refused the apply");
    assert!(index.offers.lock().expect("not poisoned").is_empty());

    assert_eq!(indexer.step().await.expect("the index answers again"), 3);
    assert_eq!(*index.offers.lock().expect("not poisoned"), listed);
    let status = indexer.status().await.expect("status");
    assert_eq!((status.lag_events, status.lag_seconds), (0, 0.0));
}
