//! Offers at scale on the embedded index: 100,000 offers ingested into the log, indexed
//! by the `search_index` indexer, then searched over HTTP with ranking — in one run.
//!
//!     cargo bench -p shopagent --bench offer_search
//!
//! Environment: `TEST_DATABASE_URL` (server; a throwaway database is created and
//! dropped), `BENCH_OFFERS` (default 100000), `BENCH_SEARCHES` (per query, default 300).
//!
//! Measured:
//! * raw baseline — the same events inserted as rows of a plain table, one transaction
//!   each, eight writers: rows/s;
//! * log — `OfferListed` events appended, eight writers, one offer per append: offers/s;
//! * index — the indexer from an empty index to the head of the log: offers/s, and the
//!   index's size on disk;
//! * search — `GET /v1/offers/search` (index query, facets, the first 100 matches loaded
//!   and ranked, a page of them as JSON)
//!   for typical queries, one client, after a tenth as many warm-up requests:
//!   p50/p95/p99 latency.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::persist::SerializedEvent;
use shopagent::Server;
use shopagent::auth::{Authenticator, Claims, Role};
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_commands::{Store, StoreConfig};
use shopagent_connectors::search::EmbeddedGenerations;
use shopagent_domain::DomainEvent;
use shopagent_domain::EventMetadata;
use shopagent_domain::ids::{Category, MerchantId, OfferId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::offer::search::OfferQuery;
use shopagent_domain::offer::{
    Availability, DeliveryEstimate, OfferEvent, OfferSource, ProductKey, ProductRecord,
    ReturnPolicy, TrustSignals,
};
use shopagent_domain::ports::OfferIndex as _;
use shopagent_projections::SearchIndexer;
use support::{env_or, ms, percentiles};
use tokio_util::sync::CancellationToken;

const ADJECTIVES: [&str; 12] = [
    "lightweight",
    "wireless",
    "waterproof",
    "compact",
    "premium",
    "classic",
    "ultralight",
    "insulated",
    "foldable",
    "rechargeable",
    "ergonomic",
    "stainless",
];
const PRODUCTS: [(&str, &str); 12] = [
    ("tent", "outdoor/camping"),
    ("sleeping bag", "outdoor/camping"),
    ("headphones", "electronics/audio"),
    ("speaker", "electronics/audio"),
    ("laptop stand", "electronics/computers"),
    ("kettle", "home/kitchen"),
    ("chef knife", "home/kitchen"),
    ("desk chair", "home/furniture"),
    ("running shoes", "apparel/shoes"),
    ("rain jacket", "apparel"),
    ("bicycle light", "outdoor/cycling"),
    ("yoga mat", "sports"),
];

/// The `n`th synthetic offer: deterministic, spread over 50 merchants.
fn offer(n: usize) -> (String, OfferEvent) {
    let usd = Currency::parse("USD").expect("USD");
    let (product, category) = PRODUCTS[n % PRODUCTS.len()];
    let adjective = ADJECTIVES[(n / PRODUCTS.len()) % ADJECTIVES.len()];
    let merchant = MerchantId::parse(&format!("merchant-{}", n % 50)).expect("merchant");
    let offer_id = OfferId::parse(&format!("sku:{n}")).expect("offer");
    let record = ProductRecord {
        title: format!("{adjective} {product} model {}", n % 997),
        brand: Some(format!("brand{}", n % 40)),
        gtin: None,
        mpn: Some(format!("M{}", n % 5_000)),
        category: Category::parse(category).expect("category"),
        merchant_category: None,
        price: Money::new(1_000 + ((n * 7_919) % 50_000) as i64, usd),
        shipping: Some(Money::new(((n % 4) * 499) as i64, usd)),
        availability: Some(if n.is_multiple_of(10) {
            Availability::OutOfStock
        } else {
            Availability::InStock
        }),
        delivery: DeliveryEstimate::new(1, 1 + (n % 9) as u16),
        returns: Some(ReturnPolicy {
            window_days: [0, 14, 30, 60][n % 4],
            free: n.is_multiple_of(3),
        }),
        trust: TrustSignals::new(3.0 + (n % 20) as f64 / 10.0, 5.0, (n % 3_000) as u32),
    };
    let stream = format!("acme/offer/{merchant}/{offer_id}");
    let event = OfferEvent::OfferListed {
        product_key: ProductKey::of(&merchant, &offer_id, &record),
        merchant,
        offer_id,
        record: Box::new(record),
        citation: None,
        source: OfferSource::Feed,
        at: time::OffsetDateTime::now_utc(),
    };
    (stream, event)
}

async fn fill(store: &Store, offers: usize) -> f64 {
    let metadata =
        serde_json::to_value(EventMetadata::new("acme", "ops:bench").to_map()).expect("metadata");
    let started = Instant::now();
    let writers = 8;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            let metadata = metadata.clone();
            tokio::spawn(async move {
                for n in (writer..offers).step_by(writers) {
                    let (stream, event) = offer(n);
                    let serialized = SerializedEvent {
                        aggregate_id: stream,
                        sequence: 1,
                        aggregate_type: "offer".into(),
                        event_type: event.event_type().into(),
                        event_version: event.event_version().into(),
                        payload: serde_json::to_value(&event).expect("payload"),
                        metadata: metadata.clone(),
                    };
                    store.append(&[serialized], None).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    offers as f64 / started.elapsed().as_secs_f64()
}

/// The raw baseline for the same ingestion: each offer's event JSON inserted as one row
/// of a plain table (stream, payload), one transaction each, by as many writers.
async fn raw_fill(url: &str, offers: usize) -> f64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .expect("raw pool");
    sqlx::query("CREATE TABLE raw_offers (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, payload JSONB NOT NULL)")
        .execute(&pool)
        .await
        .expect("raw table");
    let started = Instant::now();
    let writers = 8;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for n in (writer..offers).step_by(writers) {
                    let (stream, event) = offer(n);
                    let payload = serde_json::to_value(&event).expect("payload");
                    let mut tx = pool.begin().await.expect("transaction");
                    sqlx::query("INSERT INTO raw_offers (stream, payload) VALUES ($1, $2)")
                        .bind(stream)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let rate = offers as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    rate
}

/// Bytes under `path`, every level down.
fn directory_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let offers: usize = env_or("BENCH_OFFERS", 100_000);
    let searches: usize = env_or("BENCH_SEARCHES", 300);
    let (url, name) = create_pg_database().await;
    let config = StoreConfig::new(Some(url.clone()), "unused");
    let store = shopagent::server::open_store(&config).await.expect("store");

    let raw = raw_fill(&url, offers).await;
    println!(
        "raw baseline: {offers} offer rows inserted at {raw:.0} rows/s (8 writers, one transaction each)"
    );
    let appended = fill(&store, offers).await;
    println!(
        "log: {offers} offers appended at {appended:.0} offers/s (8 writers): {:.0} % of the raw baseline",
        100.0 * appended / raw
    );

    let dir = tempfile::tempdir().expect("index directory");
    let (index, generations) = EmbeddedGenerations::open(dir.path()).expect("index");
    let index = Arc::new(index);
    let indexer = SearchIndexer::new(store.clone(), index.clone());
    let started = Instant::now();
    indexer.catch_up().await.expect("indexed");
    let indexed = offers as f64 / started.elapsed().as_secs_f64();
    println!(
        "index: {offers} offers indexed at {indexed:.0} offers/s; {:.1} MiB on disk",
        directory_size(dir.path()) as f64 / 1_048_576.0
    );

    // Searches are measured once the background merges of the bulk load have settled,
    // as a running server's would be.
    let mut settled = (index.segments(), 0);
    while settled.1 < 3 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let _ = index
            .search(&OfferQuery {
                tenant: "acme".into(),
                limit: 1,
                ..Default::default()
            })
            .await;
        settled = match index.segments() {
            now if now == settled.0 => (now, settled.1 + 1),
            now => (now, 0),
        };
    }
    println!("index: {} segments once merges settled", settled.0);

    let auth = Authenticator::new(Some(b"bench-secret"), None);
    let server = Server::build(
        &config,
        auth.clone(),
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("server")
    .with_offer_index(index.clone(), Arc::new(generations));
    let address = server.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server.run(shutdown.clone()));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = auth
        .issue(&Claims {
            sub: "alice".into(),
            tenant: "acme".into(),
            role: Role::Shopper,
            mandate: None,
            exp: now + 3_600,
            iat: now,
        })
        .expect("token");
    let client = reqwest::Client::new();
    println!();
    println!("| query | matches | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for query in [
        "q=tent",
        "q=wireless%20headphones",
        "q=headphnes",
        "q=tent&category=outdoor&currency=USD&max_price=20000&available=true",
        "q=kettle&free_returns=true&delivery_within_days=3",
        "category=electronics",
        "",
    ] {
        let url = format!("http://{address}/v1/offers/search?{query}");
        // Steady state: the first requests of a query warm the index's caches.
        for _ in 0..searches / 10 {
            let _ = client.get(&url).bearer_auth(&token).send().await;
        }
        let mut samples = Vec::with_capacity(searches);
        let mut total = 0;
        for _ in 0..searches {
            let started = Instant::now();
            let reply: serde_json::Value = client
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .expect("search")
                .json()
                .await
                .expect("json");
            samples.push(started.elapsed());
            total = reply["total"].as_u64().unwrap_or(0);
        }
        let [p50, p95, p99, max] = percentiles(&mut samples);
        println!(
            "| `{}` | {total} | {} | {} | {} | {} |",
            if query.is_empty() { "(browse)" } else { query },
            ms(p50),
            ms(p95),
            ms(p99),
            ms(max)
        );
    }
    shutdown.cancel();
    let _ = running.await;
    drop_pg_database(&name).await;
}
