//! The offer index's behaviour, as a suite every backend of `OfferIndex` passes: full
//! text with typo tolerance, every filter, facets, cursor pages, tenants kept apart,
//! versions never going back, withdrawn offers gone, the checkpoint kept across a
//! reopen. Each case runs on the embedded index (on disk) and on the Meilisearch
//! adapter against a replay of recorded Meilisearch exchanges (`replay`).

mod replay;

use std::sync::Arc;

use shopagent_connectors::search::{EmbeddedIndex, MeilisearchIndex};
use shopagent_domain::ids::{Category, MerchantId, OfferId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::offer::search::{IndexedOffer, OfferQuery};
use shopagent_domain::offer::{Availability, DeliveryEstimate, ProductRecord, ReturnPolicy};
use shopagent_domain::ports::{IndexError, OfferIndex};

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

struct Spec {
    id: &'static str,
    merchant: &'static str,
    title: &'static str,
    category: &'static str,
    price: i64,
    shipping: Option<i64>,
    availability: Availability,
    delivery_days: Option<u16>,
    free_returns: bool,
}

fn offer(tenant: &str, spec: &Spec, version: i64) -> IndexedOffer {
    IndexedOffer::new(
        format!("{tenant}/offer/{}/{}", spec.merchant, spec.id),
        tenant.to_owned(),
        MerchantId::parse(spec.merchant).expect("merchant"),
        OfferId::parse(spec.id).expect("offer"),
        version,
        ProductRecord {
            title: spec.title.into(),
            brand: Some("Northwind".into()),
            gtin: None,
            mpn: None,
            category: Category::parse(spec.category).expect("category"),
            merchant_category: None,
            price: usd(spec.price),
            shipping: spec.shipping.map(usd),
            availability: Some(spec.availability),
            delivery: spec.delivery_days.and_then(|d| DeliveryEstimate::new(d, d)),
            returns: Some(ReturnPolicy {
                window_days: 30,
                free: spec.free_returns,
            }),
            trust: None,
        },
        Some(format!("https://{}.example/{}", spec.merchant, spec.id)),
    )
}

const CATALOGUE: [Spec; 6] = [
    Spec {
        id: "sku:tent",
        merchant: "acme",
        title: "Trail 2 two-person tent",
        category: "outdoor/camping",
        price: 19_900,
        shipping: Some(0),
        availability: Availability::InStock,
        delivery_days: Some(3),
        free_returns: true,
    },
    Spec {
        id: "sku:tent",
        merchant: "bolt",
        title: "Trail 2 tent for two",
        category: "outdoor/camping",
        price: 18_900,
        shipping: Some(1_500),
        availability: Availability::InStock,
        delivery_days: Some(7),
        free_returns: false,
    },
    Spec {
        id: "sku:bag",
        merchant: "acme",
        title: "Down sleeping bag",
        category: "outdoor/camping",
        price: 24_900,
        shipping: Some(0),
        availability: Availability::OutOfStock,
        delivery_days: None,
        free_returns: true,
    },
    Spec {
        id: "sku:phones",
        merchant: "sonic",
        title: "QuietPro wireless headphones",
        category: "electronics/audio",
        price: 37_900,
        shipping: None,
        availability: Availability::InStock,
        delivery_days: Some(2),
        free_returns: true,
    },
    Spec {
        id: "sku:bike",
        merchant: "bolt",
        title: "Gravel bicycle",
        category: "outdoor/cycling",
        price: 129_900,
        shipping: Some(4_900),
        availability: Availability::PreOrder,
        delivery_days: Some(20),
        free_returns: false,
    },
    Spec {
        id: "sku:kettle",
        merchant: "acme",
        title: "Stovetop kettle",
        category: "home/kitchen",
        price: 4_500,
        shipping: Some(500),
        availability: Availability::InStock,
        delivery_days: Some(2),
        free_returns: true,
    },
];

/// One backend under test, opened as often as a case asks.
struct Backend {
    kind: Kind,
}

enum Kind {
    Embedded(tempfile::TempDir),
    Meilisearch(replay::Replay),
}

impl Backend {
    fn embedded() -> Self {
        Self {
            kind: Kind::Embedded(tempfile::tempdir().expect("dir")),
        }
    }

    async fn meilisearch(test: &str) -> Self {
        Self {
            kind: Kind::Meilisearch(replay::Replay::start(test).await),
        }
    }

    /// The index, as a server starting would open it.
    async fn open(&self) -> Arc<dyn OfferIndex> {
        match &self.kind {
            Kind::Embedded(dir) => Arc::new(EmbeddedIndex::open(dir.path()).expect("index")),
            Kind::Meilisearch(replay) => {
                let index =
                    MeilisearchIndex::new(&replay.url, Some("test-key"), "offers").expect("client");
                index.configure().await.expect("settings applied");
                Arc::new(index)
            }
        }
    }

    async fn finish(self) {
        if let Kind::Meilisearch(replay) = self.kind {
            replay.finish().await;
        }
    }
}

async fn stocked(backend: &Backend) -> Arc<dyn OfferIndex> {
    let index = backend.open().await;
    let offers = CATALOGUE
        .iter()
        .map(|spec| offer("acme", spec, 1))
        .collect();
    index.apply(offers, vec![], None).await.expect("indexed");
    // Another tenant's listing of the same words.
    index
        .apply(vec![offer("other", &CATALOGUE[0], 1)], vec![], None)
        .await
        .expect("indexed");
    index
}

fn query(text: Option<&str>) -> OfferQuery {
    OfferQuery {
        tenant: "acme".into(),
        text: text.map(str::to_owned),
        limit: 20,
        ..OfferQuery::default()
    }
}

async fn ids(index: &Arc<dyn OfferIndex>, query: &OfferQuery) -> Vec<String> {
    index
        .search(query)
        .await
        .expect("search")
        .hits
        .into_iter()
        .map(|hit| format!("{}/{}", hit.merchant, hit.offer_id))
        .collect()
}

async fn words_find_offers_and_a_typo_is_forgiven(backend: &Backend) {
    let index = stocked(backend).await;
    let mut tents = ids(&index, &query(Some("tent"))).await;
    tents.sort();
    assert_eq!(tents, ["acme/sku:tent", "bolt/sku:tent"]);
    // One typo in a word of five letters or more, two in nine or more.
    assert_eq!(ids(&index, &query(Some("sleping"))).await, ["acme/sku:bag"]);
    assert_eq!(
        ids(&index, &query(Some("headfones"))).await,
        ["sonic/sku:phones"]
    );
    assert_eq!(
        ids(&index, &query(Some("wireles headphnes"))).await,
        ["sonic/sku:phones"]
    );
    // Short words must be exact: "tant" is not "tent".
    assert!(ids(&index, &query(Some("tant"))).await.is_empty());
    // Every word must match.
    assert!(
        ids(&index, &query(Some("tent headphones")))
            .await
            .is_empty()
    );
}

async fn without_words_the_cheapest_delivered_comes_first(backend: &Backend) {
    let index = stocked(backend).await;
    let all = ids(&index, &query(None)).await;
    assert_eq!(
        all,
        [
            "acme/sku:kettle",
            "acme/sku:tent",
            "bolt/sku:tent",
            "acme/sku:bag",
            "sonic/sku:phones",
            "bolt/sku:bike"
        ]
    );
}

async fn each_filter_narrows_the_matches(backend: &Backend) {
    let index = stocked(backend).await;
    let filtered = |change: fn(&mut OfferQuery)| {
        let mut q = query(None);
        change(&mut q);
        q
    };
    let price = filtered(|q| {
        q.currency = Some("usd".into());
        q.min_price_minor = Some(19_000);
        q.max_price_minor = Some(25_000);
    });
    assert_eq!(
        ids(&index, &price).await,
        ["acme/sku:tent", "bolt/sku:tent", "acme/sku:bag"],
        "delivered price: 189.00 + 15.00 shipping is in range"
    );
    let merchants = filtered(|q| q.merchants = vec!["bolt".into()]);
    assert_eq!(
        ids(&index, &merchants).await,
        ["bolt/sku:tent", "bolt/sku:bike"]
    );
    let outdoor = filtered(|q| q.categories = vec!["outdoor".into()]);
    assert_eq!(
        ids(&index, &outdoor).await.len(),
        4,
        "a category and what lies beneath"
    );
    let available = filtered(|q| q.available_only = true);
    assert_eq!(ids(&index, &available).await.len(), 4);
    let fast = filtered(|q| q.delivery_within_days = Some(3));
    assert_eq!(
        ids(&index, &fast).await,
        ["acme/sku:kettle", "acme/sku:tent", "sonic/sku:phones"]
    );
    let free_returns = filtered(|q| q.free_returns_only = true);
    assert_eq!(ids(&index, &free_returns).await.len(), 4);
    let euros = filtered(|q| q.currency = Some("EUR".into()));
    assert!(ids(&index, &euros).await.is_empty());
}

async fn facets_count_the_matches(backend: &Backend) {
    let index = stocked(backend).await;
    let page = index.search(&query(None)).await.expect("search");
    assert_eq!(page.total, 6);
    let count =
        |facet: &[(String, u64)], key: &str| facet.iter().find(|(k, _)| k == key).map(|(_, n)| *n);
    assert_eq!(count(&page.facets.merchant, "acme"), Some(3));
    assert_eq!(count(&page.facets.merchant, "bolt"), Some(2));
    assert_eq!(count(&page.facets.category, "outdoor/camping"), Some(3));
    assert_eq!(count(&page.facets.availability, "in_stock"), Some(4));
    assert_eq!(count(&page.facets.availability, "pre_order"), Some(1));
}

async fn pages_follow_the_cursor_without_repeats_or_gaps(backend: &Backend) {
    let index = stocked(backend).await;
    let mut q = query(None);
    q.limit = 4;
    let first = index.search(&q).await.expect("first page");
    assert_eq!(first.hits.len(), 4);
    q.cursor = first.next_cursor.clone();
    let second = index.search(&q).await.expect("second page");
    assert_eq!(second.hits.len(), 2);
    assert_eq!(second.next_cursor, None);
    let mut seen: Vec<String> = first
        .hits
        .iter()
        .chain(&second.hits)
        .map(|h| h.id.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6);
    q.cursor = Some("not-a-cursor".into());
    assert!(matches!(
        index.search(&q).await,
        Err(IndexError::InvalidQuery(_))
    ));
}

async fn an_older_version_never_replaces_a_newer_and_withdrawn_offers_go(backend: &Backend) {
    let index = stocked(backend).await;
    let mut cheaper = offer("acme", &CATALOGUE[0], 3);
    cheaper.record.price = usd(9_900);
    index.apply(vec![cheaper], vec![], None).await.expect("v3");
    index
        .apply(vec![offer("acme", &CATALOGUE[0], 2)], vec![], None)
        .await
        .expect("v2 arrives late");
    let page = index.search(&query(Some("tent"))).await.expect("search");
    let acme = page
        .hits
        .iter()
        .find(|h| h.merchant.as_str() == "acme")
        .expect("acme's tent");
    assert_eq!((acme.version, acme.record.price.minor), (3, 9_900));

    index
        .apply(vec![], vec![acme.id.clone()], None)
        .await
        .expect("withdrawn");
    assert_eq!(ids(&index, &query(Some("tent"))).await, ["bolt/sku:tent"]);

    index.clear().await.expect("cleared");
    assert!(ids(&index, &query(None)).await.is_empty());
    assert_eq!(index.checkpoint().await.expect("checkpoint"), None);
}

async fn the_index_and_its_checkpoint_survive_a_reopen(backend: &Backend) {
    {
        let index = backend.open().await;
        index
            .apply(
                vec![offer("acme", &CATALOGUE[3], 1)],
                vec![],
                Some("checkpoint-1".into()),
            )
            .await
            .expect("indexed");
    }
    let reopened = backend.open().await;
    assert_eq!(
        reopened.checkpoint().await.expect("checkpoint").as_deref(),
        Some("checkpoint-1"),
        "the checkpoint committed with the documents"
    );
    assert_eq!(
        ids(&reopened, &query(Some("headphones"))).await,
        ["sonic/sku:phones"]
    );
}

/// Each case, on each backend.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let backend = super::Backend::embedded();
                    super::$case(&backend).await;
                    backend.finish().await;
                }
            )*
        }

        mod meilisearch {
            $(
                #[tokio::test]
                async fn $case() {
                    let backend = super::Backend::meilisearch(stringify!($case)).await;
                    super::$case(&backend).await;
                    backend.finish().await;
                }
            )*
        }
    };
}

suite!(
    words_find_offers_and_a_typo_is_forgiven,
    without_words_the_cheapest_delivered_comes_first,
    each_filter_narrows_the_matches,
    facets_count_the_matches,
    pages_follow_the_cursor_without_repeats_or_gaps,
    an_older_version_never_replaces_a_newer_and_withdrawn_offers_go,
    the_index_and_its_checkpoint_survive_a_reopen,
);

#[tokio::test]
async fn a_promoted_generation_is_the_one_a_restart_opens() {
    use shopagent_connectors::search::EmbeddedGenerations;
    use shopagent_domain::ports::IndexGenerations;
    let dir = tempfile::tempdir().expect("dir");
    // Files of an index from before generations: replaced by the first generation.
    std::fs::write(dir.path().join("meta.json"), "{}").expect("legacy file");
    {
        let (live, generations) = EmbeddedGenerations::open(dir.path()).expect("opened");
        assert!(!dir.path().join("meta.json").exists());
        live.apply(
            vec![offer("acme", &CATALOGUE[0], 1)],
            vec![],
            Some("1:1".into()),
        )
        .await
        .expect("indexed");
        let next = generations.create_next().await.expect("next");
        next.apply(
            vec![offer("acme", &CATALOGUE[3], 1)],
            vec![],
            Some("1:2".into()),
        )
        .await
        .expect("indexed");
        let promoted = generations.promote().await.expect("promoted");
        assert_eq!(
            promoted.checkpoint().await.expect("checkpoint").as_deref(),
            Some("1:2")
        );
        assert!(
            !dir.path().join("g1").exists(),
            "the old generation is removed"
        );
    }
    let (reopened, _) = EmbeddedGenerations::open(dir.path()).expect("reopened");
    let reopened: Arc<dyn OfferIndex> = Arc::new(reopened);
    assert_eq!(
        reopened.checkpoint().await.expect("checkpoint").as_deref(),
        Some("1:2")
    );
    assert_eq!(
        ids(&reopened, &query(Some("headphones"))).await,
        ["sonic/sku:phones"]
    );
}

#[tokio::test]
async fn the_rebuilt_generation_is_swapped_in() {
    use shopagent_connectors::search::MeilisearchGenerations;
    use shopagent_domain::ports::IndexGenerations;
    let replay = replay::Replay::start("the_rebuilt_generation_is_swapped_in").await;
    let generations =
        MeilisearchGenerations::new(&replay.url, Some("test-key"), "offers").expect("client");
    // A new generation beside the live index: emptied of any cut-short rebuild, set up.
    let next = generations.create_next().await.expect("next generation");
    next.apply(
        vec![offer("acme", &CATALOGUE[3], 1)],
        vec![],
        Some("checkpoint-1".into()),
    )
    .await
    .expect("indexed");
    // Swapped with the live index in one task; the old contents deleted.
    let live = generations.promote().await.expect("promoted");
    assert_eq!(
        live.checkpoint().await.expect("checkpoint").as_deref(),
        Some("checkpoint-1")
    );
    replay.finish().await;
}
