//! The offer index on a Meilisearch server (`MEILISEARCH_URL`), through meilisearch-sdk.
//!
//! One document per offer, its id the offer's stream in URL-safe base64 (Meilisearch
//! ids allow only letters, digits, `-` and `_`), with the fields filters and facets
//! need and the whole offer under `offer`. `configure` applies the index settings at
//! start: the same searchable fields and typo rules as the embedded index (one edit in
//! words of five letters or more, two in nine or more; every word must match; no
//! prefix matching), the filterable fields and the sort on delivered price.
//!
//! The checkpoint is a document of the same index (`kind: checkpoint`), sent in the
//! same addition as the offers it covers: Meilisearch applies one task wholly or not at
//! all, so the index is never ahead of its checkpoint. Removals are a task of their own,
//! enqueued before that addition (tasks of an index run in order); replaying a batch
//! whose addition failed removes the same offers again. Every write waits for its task:
//! `apply` returns once Meilisearch has applied it.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meilisearch_sdk::client::{Client, SwapIndexes};
use meilisearch_sdk::documents::DocumentsQuery;
use meilisearch_sdk::errors::{Error as SdkError, ErrorCode};
use meilisearch_sdk::indexes::Index;
use meilisearch_sdk::search::{MatchingStrategies, Selectors};
use meilisearch_sdk::settings::{
    MinWordSizeForTypos, PrefixSearchSettings, Settings, TypoToleranceSettings,
};
use meilisearch_sdk::task_info::TaskInfo;
use meilisearch_sdk::tasks::Task;
use serde::{Deserialize, Serialize};
use shopagent_domain::offer::search::{Facets, IndexedOffer, OfferQuery, SearchPage};
use shopagent_domain::ports::{IndexError, IndexGenerations, OfferIndex};

/// The index's name unless configured otherwise.
pub const DEFAULT_INDEX: &str = "shopagent_offers";
/// The id of the checkpoint document.
const CHECKPOINT_ID: &str = "checkpoint";
/// How often a task's state is asked for, and for how long.
const TASK_POLL: Duration = Duration::from_millis(25);
const TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// Values returned per facet.
const FACET_VALUES: usize = 50;
const FACETS: [&str; 3] = ["merchant", "category", "availability"];

/// The offer index on a Meilisearch server.
#[derive(Clone)]
pub struct MeilisearchIndex {
    client: Client,
    index: Index,
}

impl std::fmt::Debug for MeilisearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeilisearchIndex")
            .field("index", &self.index.uid)
            .finish_non_exhaustive()
    }
}

/// One offer as the Meilisearch index stores it.
#[derive(Debug, Serialize, Deserialize)]
struct OfferDocument {
    id: String,
    kind: String,
    tenant: String,
    title: String,
    brand: Option<String>,
    category: String,
    /// The category and each node above it, for "within" filters.
    category_path: Vec<String>,
    merchant_category: Option<String>,
    mpn: Option<String>,
    merchant: String,
    availability: String,
    available: bool,
    currency: String,
    delivered_minor: i64,
    /// Absent when the offer states none: no delivery filter matches it.
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_days: Option<u16>,
    free_returns: bool,
    version: i64,
    offer: IndexedOffer,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointDocument {
    id: String,
    kind: String,
    checkpoint: String,
}

/// Only the fields the version check reads.
#[derive(Debug, Deserialize)]
struct StoredVersion {
    id: String,
    version: i64,
}

#[derive(Debug, Deserialize)]
struct Hit {
    offer: IndexedOffer,
}

/// A document of either kind, in one addition.
#[derive(Serialize)]
#[serde(untagged)]
enum Document {
    Offer(Box<OfferDocument>),
    Checkpoint(CheckpointDocument),
}

fn document_id(stream: &str) -> String {
    format!("o-{}", URL_SAFE_NO_PAD.encode(stream))
}

fn unavailable(error: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(error.to_string())
}

/// `value` as a Meilisearch filter string literal.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn any_of(field: &str, values: &[String]) -> String {
    let values: Vec<String> = values.iter().map(|v| quoted(v)).collect();
    format!("{field} IN [{}]", values.join(", "))
}

impl OfferDocument {
    fn of(offer: &IndexedOffer) -> Self {
        let record = &offer.record;
        Self {
            id: document_id(&offer.id),
            kind: "offer".into(),
            tenant: offer.tenant.clone(),
            title: record.title.clone(),
            brand: record.brand.clone(),
            category: record.category.as_str().to_owned(),
            category_path: offer.category_path().map(str::to_owned).collect(),
            merchant_category: record.merchant_category.clone(),
            mpn: record.mpn.clone(),
            merchant: offer.merchant.as_str().to_owned(),
            availability: offer.availability_name().to_owned(),
            available: offer.available(),
            currency: record.price.currency.code().to_owned(),
            delivered_minor: offer.delivered_minor,
            delivery_days: record.delivery.map(|d| d.max_days),
            free_returns: offer.free_returns(),
            version: offer.version,
            offer: offer.clone(),
        }
    }
}

/// The filter expression for `query`: its tenant's offers, and every filter it gives.
fn filter(query: &OfferQuery) -> String {
    let mut clauses = vec![
        format!("kind = {}", quoted("offer")),
        format!("tenant = {}", quoted(&query.tenant)),
    ];
    if let Some(currency) = &query.currency {
        clauses.push(format!(
            "currency = {}",
            quoted(&currency.to_ascii_uppercase())
        ));
    }
    if let Some(min) = query.min_price_minor {
        clauses.push(format!("delivered_minor >= {min}"));
    }
    if let Some(max) = query.max_price_minor {
        clauses.push(format!("delivered_minor <= {max}"));
    }
    if !query.merchants.is_empty() {
        clauses.push(any_of("merchant", &query.merchants));
    }
    if !query.categories.is_empty() {
        clauses.push(any_of("category_path", &query.categories));
    }
    if query.available_only {
        clauses.push("available = true".into());
    }
    if let Some(days) = query.delivery_within_days {
        clauses.push(format!("delivery_days <= {days}"));
    }
    if query.free_returns_only {
        clauses.push("free_returns = true".into());
    }
    clauses.join(" AND ")
}

/// The settings `configure` applies.
fn settings() -> Settings {
    Settings::new()
        .with_searchable_attributes([
            "title",
            "brand",
            "category",
            "merchant_category",
            "mpn",
            "merchant",
        ])
        .with_filterable_attributes([
            "kind",
            "tenant",
            "currency",
            "delivered_minor",
            "merchant",
            "category",
            "category_path",
            "availability",
            "available",
            "delivery_days",
            "free_returns",
        ])
        .with_sortable_attributes(["delivered_minor"])
        .with_typo_tolerance(TypoToleranceSettings {
            enabled: Some(true),
            disable_on_attributes: None,
            disable_on_words: None,
            min_word_size_for_typos: Some(MinWordSizeForTypos {
                one_typo: Some(5),
                two_typos: Some(9),
            }),
            disable_on_numbers: None,
        })
        .with_max_values_per_facet(FACET_VALUES)
}

impl MeilisearchIndex {
    /// The index `index` on the server at `url`. Nothing is asked of the server until
    /// [`Self::configure`].
    pub fn new(url: &str, api_key: Option<&str>, index: &str) -> Result<Self, IndexError> {
        let client = Client::new(url, api_key).map_err(unavailable)?;
        let index = client.index(index);
        Ok(Self { client, index })
    }

    /// Applies the index settings (creating the index if missing) and waits for them.
    pub async fn configure(&self) -> Result<(), IndexError> {
        let task = self
            .index
            .set_settings(&settings())
            .await
            .map_err(unavailable)?;
        self.wait(task).await?;
        let task = self
            .index
            .set_prefix_search(PrefixSearchSettings::Disabled)
            .await
            .map_err(unavailable)?;
        self.wait(task).await
    }

    /// Waits until Meilisearch has applied `task`; its error if it failed.
    async fn wait(&self, task: TaskInfo) -> Result<(), IndexError> {
        match task
            .wait_for_completion(&self.client, Some(TASK_POLL), Some(TASK_TIMEOUT))
            .await
            .map_err(unavailable)?
        {
            Task::Succeeded { .. } => Ok(()),
            failed @ Task::Failed { .. } => Err(unavailable(failed.unwrap_failure())),
            other => Err(unavailable(format!(
                "task {} did not finish",
                other.get_uid()
            ))),
        }
    }

    /// The stored version of each of `ids` that is indexed.
    async fn stored_versions(&self, ids: &[String]) -> Result<HashMap<String, i64>, IndexError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let results = DocumentsQuery::new(&self.index)
            .with_ids(ids.iter().map(String::as_str))
            .with_fields(["id", "version"])
            .with_limit(ids.len())
            .execute::<StoredVersion>()
            .await
            .map_err(unavailable)?;
        Ok(results
            .results
            .into_iter()
            .map(|stored| (stored.id, stored.version))
            .collect())
    }
}

#[async_trait::async_trait]
impl OfferIndex for MeilisearchIndex {
    async fn apply(
        &self,
        offers: Vec<IndexedOffer>,
        withdrawn: Vec<String>,
        checkpoint: Option<String>,
    ) -> Result<(), IndexError> {
        // The newest version of each offer in the batch, unless a newer one is stored.
        let mut newest: HashMap<String, OfferDocument> = HashMap::new();
        for offer in &offers {
            let document = OfferDocument::of(offer);
            if newest
                .get(&document.id)
                .is_none_or(|kept| kept.version < document.version)
            {
                newest.insert(document.id.clone(), document);
            }
        }
        let mut ids: Vec<String> = newest.keys().cloned().collect();
        ids.sort();
        let stored = self.stored_versions(&ids).await?;
        let mut documents: Vec<Document> = ids
            .iter()
            .filter_map(|id| newest.remove(id))
            .filter(|document| {
                stored
                    .get(&document.id)
                    .is_none_or(|&version| version <= document.version)
            })
            .map(|document| Document::Offer(Box::new(document)))
            .collect();

        if !withdrawn.is_empty() {
            let ids: Vec<String> = withdrawn.iter().map(|id| document_id(id)).collect();
            let task = self
                .index
                .delete_documents(&ids)
                .await
                .map_err(unavailable)?;
            self.wait(task).await?;
        }
        if let Some(checkpoint) = checkpoint {
            documents.push(Document::Checkpoint(CheckpointDocument {
                id: CHECKPOINT_ID.into(),
                kind: "checkpoint".into(),
                checkpoint,
            }));
        }
        if documents.is_empty() {
            return Ok(());
        }
        let task = self
            .index
            .add_or_replace(&documents, Some("id"))
            .await
            .map_err(unavailable)?;
        self.wait(task).await
    }

    async fn checkpoint(&self) -> Result<Option<String>, IndexError> {
        match self
            .index
            .get_document::<CheckpointDocument>(CHECKPOINT_ID)
            .await
        {
            Ok(document) => Ok(Some(document.checkpoint)),
            Err(SdkError::Meilisearch(error))
                if matches!(
                    error.error_code,
                    ErrorCode::DocumentNotFound | ErrorCode::IndexNotFound
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn search(&self, query: &OfferQuery) -> Result<SearchPage, IndexError> {
        let offset = super::offset_of(query.cursor.as_deref())?;
        let limit = query.limit.clamp(1, 100);
        let filter = filter(query);
        let text = query.text.as_deref().map(str::trim).unwrap_or_default();
        let mut search = self.index.search();
        search
            .with_filter(&filter)
            .with_facets(Selectors::Some(&FACETS))
            .with_attributes_to_retrieve(Selectors::Some(&["offer"]))
            .with_matching_strategy(MatchingStrategies::ALL)
            .with_offset(offset)
            .with_limit(limit);
        if text.is_empty() {
            search.with_sort(&["delivered_minor:asc"]);
        } else {
            search.with_query(text);
        }
        let results = search.execute::<Hit>().await.map_err(unavailable)?;
        let total = results.estimated_total_hits.unwrap_or(results.hits.len()) as u64;
        let mut distribution = results.facet_distribution.unwrap_or_default();
        let mut facet = |name: &str| -> Vec<(String, u64)> {
            let mut counts: Vec<(String, u64)> = distribution
                .remove(name)
                .unwrap_or_default()
                .into_iter()
                .map(|(value, count)| (value, count as u64))
                .collect();
            // Most first, as the embedded index gives them.
            counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            counts
        };
        let facets = Facets {
            merchant: facet("merchant"),
            category: facet("category"),
            availability: facet("availability"),
        };
        let hits: Vec<IndexedOffer> = results.hits.into_iter().map(|h| h.result.offer).collect();
        let next = offset + hits.len();
        Ok(SearchPage {
            next_cursor: super::next_cursor(next, total),
            total,
            facets,
            hits,
        })
    }

    async fn clear(&self) -> Result<(), IndexError> {
        let task = self
            .index
            .delete_all_documents()
            .await
            .map_err(unavailable)?;
        self.wait(task).await
    }
    fn shared(&self) -> bool {
        true
    }
}

/// Generations of the index on Meilisearch: a rebuild fills `{index}_next`; promotion
/// swaps it with the live index in one task (searches see the one or the other, never
/// a mix), then deletes what was live. The live index keeps its name throughout.
#[derive(Debug, Clone)]
pub struct MeilisearchGenerations {
    live: MeilisearchIndex,
    next: MeilisearchIndex,
}

impl MeilisearchGenerations {
    pub fn new(url: &str, api_key: Option<&str>, index: &str) -> Result<Self, IndexError> {
        Ok(Self {
            live: MeilisearchIndex::new(url, api_key, index)?,
            next: MeilisearchIndex::new(url, api_key, &format!("{index}_next"))?,
        })
    }

    /// Deletes the next generation's index, if there is one.
    async fn delete_next(&self) -> Result<(), IndexError> {
        let task = self
            .next
            .client
            .delete_index(&self.next.index.uid)
            .await
            .map_err(unavailable)?;
        match task
            .wait_for_completion(&self.next.client, Some(TASK_POLL), Some(TASK_TIMEOUT))
            .await
            .map_err(unavailable)?
        {
            Task::Succeeded { .. } => Ok(()),
            failed @ Task::Failed { .. } => {
                let error = failed.unwrap_failure();
                if error.error_code == ErrorCode::IndexNotFound {
                    Ok(())
                } else {
                    Err(unavailable(error))
                }
            }
            other => Err(unavailable(format!(
                "task {} did not finish",
                other.get_uid()
            ))),
        }
    }
}

#[async_trait::async_trait]
impl IndexGenerations for MeilisearchGenerations {
    async fn create_next(&self) -> Result<std::sync::Arc<dyn OfferIndex>, IndexError> {
        // What a rebuild cut short left behind.
        self.delete_next().await?;
        self.next.configure().await?;
        Ok(std::sync::Arc::new(self.next.clone()))
    }

    async fn promote(&self) -> Result<std::sync::Arc<dyn OfferIndex>, IndexError> {
        let swap = SwapIndexes {
            indexes: (self.live.index.uid.clone(), self.next.index.uid.clone()),
            rename: None,
        };
        let task = self
            .live
            .client
            .swap_indexes([&swap])
            .await
            .map_err(unavailable)?;
        self.live.wait(task).await?;
        // The next generation's name now holds what was live.
        if let Err(error) = self.delete_next().await {
            tracing::warn!(%error, "retired search index generation not deleted");
        }
        Ok(std::sync::Arc::new(self.live.clone()))
    }
}
