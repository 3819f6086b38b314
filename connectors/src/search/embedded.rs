//! The embedded offer index: tantivy, in a directory of the data directory (or in
//! memory for tests). No service needed.
//!
//! One document per offer, its id the offer's stream. Full text over title, brand,
//! categories and part numbers with Meilisearch's typo rules (one edit in words of
//! five letters or more, two in nine or more); filters on tenant, currency, price,
//! merchant, category (the node or beneath it), availability, delivery days and free
//! returns; facets by merchant, category and availability from the fast fields.
//! Without words, matches come cheapest delivered first.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shopagent_domain::offer::search::{Facets, IndexedOffer, OfferQuery, SearchPage};
use shopagent_domain::ports::{IndexError, OfferIndex};
use tantivy::aggregation::AggregationCollector;
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, FuzzyTermQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, TantivyDocument,
    Value as _,
};
use tantivy::tokenizer::TokenStream;
use tantivy::{Index, IndexReader, IndexWriter, Order, ReloadPolicy, Term, doc};
use tokio::sync::Mutex;

/// Memory the writer may buffer before it flushes a segment.
const WRITER_MEMORY: usize = 50_000_000;
/// Delivery days stored for an offer that states none: beyond any filter.
const NO_DELIVERY_STATED: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    tenant: Field,
    text: Field,
    merchant: Field,
    category: Field,
    /// The category and every ancestor, for "within" filters.
    category_path: Field,
    availability: Field,
    currency: Field,
    price: Field,
    delivered: Field,
    available: Field,
    delivery_days: Field,
    free_returns: Field,
    version: Field,
    document: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        id: builder.add_text_field("id", STRING | STORED),
        tenant: builder.add_text_field("tenant", STRING),
        text: builder.add_text_field("text", TEXT),
        merchant: builder.add_text_field("merchant", STRING | FAST),
        category: builder.add_text_field("category", STRING | FAST),
        category_path: builder.add_text_field("category_path", STRING),
        availability: builder.add_text_field("availability", STRING | FAST),
        currency: builder.add_text_field("currency", STRING),
        price: builder.add_i64_field("price", INDEXED | FAST),
        delivered: builder.add_i64_field("delivered", INDEXED | FAST),
        available: builder.add_u64_field("available", INDEXED),
        delivery_days: builder.add_u64_field("delivery_days", INDEXED),
        free_returns: builder.add_u64_field("free_returns", INDEXED),
        version: builder.add_i64_field("version", INDEXED | STORED),
        document: builder.add_text_field("document", STORED),
    };
    (builder.build(), fields)
}

/// How often a search looks for segments merged in the background since the last
/// commit, which the reader sees only once reloaded.
const MERGE_RELOAD: Duration = Duration::from_secs(1);

/// The embedded offer index.
#[derive(Clone)]
pub struct EmbeddedIndex {
    index: Index,
    fields: Fields,
    reader: IndexReader,
    writer: Arc<Mutex<IndexWriter>>,
    /// When the reader was last reloaded.
    reloaded_at: Arc<std::sync::Mutex<Instant>>,
}

impl std::fmt::Debug for EmbeddedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedIndex").finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> IndexError {
    IndexError::Unavailable(error.to_string())
}

impl EmbeddedIndex {
    /// The index in `directory`, created if missing.
    pub fn open(directory: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(directory).map_err(unavailable)?;
        let (schema, fields) = schema();
        let mmap = tantivy::directory::MmapDirectory::open(directory).map_err(unavailable)?;
        let index = Index::open_or_create(mmap, schema).map_err(unavailable)?;
        Self::with_index(index, fields)
    }

    /// An index in memory: for tests and benches.
    pub fn in_memory() -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        Self::with_index(Index::create_in_ram(schema), fields)
    }

    fn with_index(index: Index, fields: Fields) -> Result<Self, IndexError> {
        let writer = index.writer(WRITER_MEMORY).map_err(unavailable)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(unavailable)?;
        Ok(Self {
            index,
            fields,
            reader,
            writer: Arc::new(Mutex::new(writer)),
            reloaded_at: Arc::new(std::sync::Mutex::new(Instant::now())),
        })
    }

    fn document(&self, offer: &IndexedOffer) -> Result<TantivyDocument, IndexError> {
        let f = self.fields;
        let record = &offer.record;
        let text = [
            Some(record.title.as_str()),
            record.brand.as_deref(),
            Some(record.category.as_str()),
            record.merchant_category.as_deref(),
            record.mpn.as_deref(),
            Some(offer.merchant.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let mut document = doc!(
            f.id => offer.id.as_str(),
            f.tenant => offer.tenant.as_str(),
            f.text => text,
            f.merchant => offer.merchant.as_str(),
            f.category => record.category.as_str(),
            f.availability => offer.availability_name(),
            f.currency => record.price.currency.code(),
            f.price => record.price.minor,
            f.delivered => offer.delivered_minor,
            f.available => u64::from(offer.available()),
            f.delivery_days => record.delivery.map_or(NO_DELIVERY_STATED, |d| u64::from(d.max_days)),
            f.free_returns => u64::from(offer.free_returns()),
            f.version => offer.version,
            f.document => serde_json::to_string(offer).map_err(unavailable)?,
        );
        for node in offer.category_path() {
            document.add_text(f.category_path, node);
        }
        Ok(document)
    }

    /// The stored version of `id`, if indexed.
    fn stored_version(
        &self,
        searcher: &tantivy::Searcher,
        id: &str,
    ) -> Result<Option<i64>, IndexError> {
        let query = TermQuery::new(
            Term::from_field_text(self.fields.id, id),
            IndexRecordOption::Basic,
        );
        let top = searcher
            .search(&query, &TopDocs::with_limit(1))
            .map_err(unavailable)?;
        let Some((_, address)) = top.first() else {
            return Ok(None);
        };
        let stored: TantivyDocument = searcher.doc(*address).map_err(unavailable)?;
        Ok(stored
            .get_first(self.fields.version)
            .and_then(|v| v.as_i64()))
    }

    fn apply_blocking(
        &self,
        offers: Vec<IndexedOffer>,
        withdrawn: Vec<String>,
        checkpoint: Option<String>,
        writer: &mut IndexWriter,
    ) -> Result<(), IndexError> {
        let searcher = self.reader.searcher();
        // The newest version of each offer in the batch.
        let mut newest: std::collections::HashMap<String, IndexedOffer> =
            std::collections::HashMap::new();
        for offer in offers {
            match newest.get(&offer.id) {
                Some(kept) if kept.version >= offer.version => {}
                _ => {
                    newest.insert(offer.id.clone(), offer);
                }
            }
        }
        for offer in newest.values() {
            if self
                .stored_version(&searcher, &offer.id)?
                .is_some_and(|stored| stored > offer.version)
            {
                continue;
            }
            writer.delete_term(Term::from_field_text(self.fields.id, &offer.id));
            writer
                .add_document(self.document(offer)?)
                .map_err(unavailable)?;
        }
        for id in &withdrawn {
            writer.delete_term(Term::from_field_text(self.fields.id, id));
        }
        // The checkpoint commits with the documents: the index is never ahead of it, nor
        // behind.
        let mut commit = writer.prepare_commit().map_err(unavailable)?;
        if let Some(checkpoint) = &checkpoint {
            commit.set_payload(checkpoint);
        }
        commit.commit().map_err(unavailable)?;
        self.reader.reload().map_err(unavailable)
    }

    fn words(&self, text: &str) -> Vec<String> {
        let mut tokenizer = self
            .index
            .tokenizer_for_field(self.fields.text)
            .unwrap_or_default();
        let mut stream = tokenizer.token_stream(text);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        words
    }

    fn query(&self, query: &OfferQuery) -> Result<Box<dyn Query>, IndexError> {
        let f = self.fields;
        let term = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        let any_of = |field: Field, values: &[String]| -> Box<dyn Query> {
            Box::new(BooleanQuery::new(
                values
                    .iter()
                    .map(|v| (Occur::Should, term(field, v)))
                    .collect(),
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, term(f.tenant, &query.tenant))];
        for word in query
            .text
            .as_deref()
            .map(|t| self.words(t))
            .unwrap_or_default()
        {
            let exact = Term::from_field_text(f.text, &word);
            let typos = match word.chars().count() {
                0..=4 => 0,
                5..=8 => 1,
                _ => 2,
            };
            let matches: Box<dyn Query> = if typos == 0 {
                Box::new(TermQuery::new(exact, IndexRecordOption::WithFreqs))
            } else {
                Box::new(BooleanQuery::new(vec![
                    (
                        Occur::Should,
                        Box::new(tantivy::query::BoostQuery::new(
                            Box::new(TermQuery::new(exact.clone(), IndexRecordOption::WithFreqs)),
                            2.0,
                        )) as Box<dyn Query>,
                    ),
                    (
                        Occur::Should,
                        Box::new(FuzzyTermQuery::new(exact, typos, true)),
                    ),
                ]))
            };
            clauses.push((Occur::Must, matches));
        }
        if let Some(currency) = &query.currency {
            clauses.push((
                Occur::Must,
                term(f.currency, &currency.to_ascii_uppercase()),
            ));
        }
        if query.min_price_minor.is_some() || query.max_price_minor.is_some() {
            let low = query.min_price_minor.unwrap_or(i64::MIN);
            let high = query.max_price_minor.unwrap_or(i64::MAX);
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    std::ops::Bound::Included(Term::from_field_i64(f.delivered, low)),
                    std::ops::Bound::Included(Term::from_field_i64(f.delivered, high)),
                )),
            ));
        }
        if !query.merchants.is_empty() {
            clauses.push((Occur::Must, any_of(f.merchant, &query.merchants)));
        }
        if !query.categories.is_empty() {
            clauses.push((Occur::Must, any_of(f.category_path, &query.categories)));
        }
        if query.available_only {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.available, 1),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if let Some(days) = query.delivery_within_days {
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    std::ops::Bound::Included(Term::from_field_u64(f.delivery_days, 0)),
                    std::ops::Bound::Included(Term::from_field_u64(
                        f.delivery_days,
                        u64::from(days),
                    )),
                )),
            ));
        }
        if query.free_returns_only {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.free_returns, 1),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if clauses.is_empty() {
            return Ok(Box::new(AllQuery));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    /// Segments searches read now.
    pub fn segments(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Picks up segments merged since the last reload, at most once per [`MERGE_RELOAD`]:
    /// many small segments from a burst of commits make every search slower until then.
    fn reload_after_merges(&self) {
        // Another search is reloading: this one reads what there is.
        let Ok(mut reloaded_at) = self.reloaded_at.try_lock() else {
            return;
        };
        if reloaded_at.elapsed() < MERGE_RELOAD {
            return;
        }
        *reloaded_at = Instant::now();
        if let Err(error) = self.reader.reload() {
            tracing::warn!(%error, "search index reader not reloaded");
        }
    }

    fn search_blocking(&self, query: &OfferQuery) -> Result<SearchPage, IndexError> {
        self.reload_after_merges();
        let offset = super::offset_of(query.cursor.as_deref())?;
        let limit = query.limit.clamp(1, 100);
        let searcher = self.reader.searcher();
        let tantivy_query = self.query(query)?;
        let aggregations: Aggregations = serde_json::from_value(serde_json::json!({
            "merchant": {"terms": {"field": "merchant", "size": 50}},
            "category": {"terms": {"field": "category", "size": 50}},
            "availability": {"terms": {"field": "availability", "size": 10}},
        }))
        .map_err(unavailable)?;
        let facets_collector = AggregationCollector::from_aggs(aggregations, Default::default());
        let top = TopDocs::with_limit(limit).and_offset(offset);
        let (addresses, total, facets): (Vec<tantivy::DocAddress>, usize, _) =
            if query.text.as_deref().is_some_and(|t| !t.trim().is_empty()) {
                let (top, total, facets) = searcher
                    .search(&tantivy_query, &(top, Count, facets_collector))
                    .map_err(unavailable)?;
                (top.into_iter().map(|(_, a)| a).collect(), total, facets)
            } else {
                let (top, total, facets) = searcher
                    .search(
                        &tantivy_query,
                        &(
                            top.order_by_fast_field::<i64>("delivered", Order::Asc),
                            Count,
                            facets_collector,
                        ),
                    )
                    .map_err(unavailable)?;
                (top.into_iter().map(|(_, a)| a).collect(), total, facets)
            };
        let mut hits = Vec::with_capacity(addresses.len());
        for address in addresses {
            let stored: TantivyDocument = searcher.doc(address).map_err(unavailable)?;
            let Some(json) = stored
                .get_first(self.fields.document)
                .and_then(|v| v.as_str())
            else {
                continue;
            };
            hits.push(serde_json::from_str::<IndexedOffer>(json).map_err(unavailable)?);
        }
        let facets = serde_json::to_value(&facets).map_err(unavailable)?;
        let buckets = |name: &str| -> Vec<(String, u64)> {
            facets[name]["buckets"]
                .as_array()
                .map(|buckets| {
                    buckets
                        .iter()
                        .filter_map(|b| {
                            Some((b["key"].as_str()?.to_owned(), b["doc_count"].as_u64()?))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let next = offset + hits.len();
        Ok(SearchPage {
            next_cursor: super::next_cursor(next, total as u64),
            total: total as u64,
            facets: Facets {
                merchant: buckets("merchant"),
                category: buckets("category"),
                availability: buckets("availability"),
            },
            hits,
        })
    }
}

#[async_trait::async_trait]
impl OfferIndex for EmbeddedIndex {
    async fn apply(
        &self,
        offers: Vec<IndexedOffer>,
        withdrawn: Vec<String>,
        checkpoint: Option<String>,
    ) -> Result<(), IndexError> {
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        let index = self.clone();
        tokio::task::spawn_blocking(move || {
            index.apply_blocking(offers, withdrawn, checkpoint, &mut writer)
        })
        .await
        .map_err(unavailable)?
    }

    async fn checkpoint(&self) -> Result<Option<String>, IndexError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            // `clear` leaves an empty payload: no checkpoint.
            index
                .load_metas()
                .map(|metas| metas.payload.filter(|p| !p.is_empty()))
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }

    async fn search(&self, query: &OfferQuery) -> Result<SearchPage, IndexError> {
        let index = self.clone();
        let query = query.clone();
        tokio::task::spawn_blocking(move || index.search_blocking(&query))
            .await
            .map_err(unavailable)?
    }

    async fn clear(&self) -> Result<(), IndexError> {
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            writer.delete_all_documents().map_err(unavailable)?;
            let mut commit = writer.prepare_commit().map_err(unavailable)?;
            commit.set_payload("");
            commit.commit().map_err(unavailable)?;
            reader.reload().map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }
}
