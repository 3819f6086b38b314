//! How fast shopagent answers the card issuer's real-time authorization request
//! (`POST /v1/webhooks/stripe`, which Stripe wants answered within 2 seconds), beside the
//! raw-database work it stands on, in one run.
//!
//!     cargo bench -p shopagent --bench authorization
//!
//! Environment: `TEST_DATABASE_URL` (server to use; a throwaway database is created and
//! dropped; default `postgres://postgres@127.0.0.1:5432/postgres`), `BENCH_REQUESTS`
//! (per concurrency level, default 2000), `BENCH_CONCURRENCY` (default `1,8`),
//! `BENCH_TRACING=1` (record spans as `shopagent serve` does, exporting none, with logs
//! at `warn`: what tracing costs).
//!
//! Measured at each concurrency, over HTTP on loopback against a real server on
//! PostgreSQL: signature check, payment load, registry and mandate reads, the decision
//! appended with its idempotency record, the answer. Each request is a fresh
//! authorization on its own payment (card). Beside it, the raw baseline: one
//! transaction that reads a stream's rows and inserts the next one through sqlx.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use shopagent::Server;
use shopagent::auth::Authenticator;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_commands::{CommandBus, StoreConfig};
use shopagent_domain::EventMetadata;
use shopagent_domain::ids::{MerchantId, OrderId, PaymentId};
use shopagent_domain::merchant::{Merchant, MerchantCommand, MerchantProfile, Protocol};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::CheckoutPath;
use shopagent_domain::payment::{CardReference, Payment, PaymentCommand};
use support::{RawLog, env_or, ms, percentiles};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_bench";

fn sign(body: &str) -> String {
    let at = OffsetDateTime::now_utc().unix_timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{at}.{body}").as_bytes());
    format!("t={at},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Registers `acme` with card-acceptor id 4445550001.
async fn register_merchant(store: &shopagent_commands::Store) {
    let now = OffsetDateTime::now_utc();
    let acme = MerchantId::parse("acme").expect("merchant");
    let registry = CommandBus::<Merchant>::new(store.clone());
    let profile = MerchantProfile {
        name: "Acme".into(),
        protocol: Some(Protocol::Ucp),
        api_endpoint: Some("https://acme.example/ucp".into()),
        deeplink_base: None,
        headless_domain: None,
        paths: [CheckoutPath::Api].into(),
        card_acceptor_ids: ["4445550001".to_owned()].into(),
    };
    registry
        .execute(
            "bench/merchant/acme",
            MerchantCommand::Register {
                merchant: acme.clone(),
                profile,
                at: now,
            },
            EventMetadata::new("bench", "bench"),
        )
        .await
        .expect("register");
}

/// Payments with issued cards, locked to `acme`.
async fn payments(store: &shopagent_commands::Store, count: usize) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let acme = MerchantId::parse("acme").expect("merchant");
    let payments = CommandBus::<Payment>::new(store.clone());
    let mut streams = Vec::with_capacity(count);
    for n in 0..count {
        let payment_id = PaymentId::new();
        let stream = format!("bench/{payment_id}");
        let request = PaymentCommand::RequestCard {
            payment_id,
            order_id: OrderId::new(),
            shopper: "alice".into(),
            mandate_id: None,
            merchant: acme.clone(),
            cap: Money::new(50_000, Currency::parse("USD").expect("USD")),
            at: now,
        };
        payments
            .execute(&stream, request, EventMetadata::new("bench", "bench"))
            .await
            .expect("request");
        let letters: String = format!("{n:08}")
            .bytes()
            .map(|b| char::from(b'a' + (b - b'0')))
            .collect();
        let issued = PaymentCommand::RecordCardIssued {
            card: CardReference::parse(&format!("ic_bench{letters}")).expect("card"),
            display: None,
            expires_at: now + time::Duration::days(1),
            at: now,
        };
        payments
            .execute(&stream, issued, EventMetadata::new("bench", "bench"))
            .await
            .expect("issue");
        streams.push(stream);
    }
    streams
}

async fn webhook_latencies(
    url: &str,
    streams: &[String],
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let client = reqwest::Client::new();
    let queue = Arc::new(std::sync::Mutex::new(streams.to_vec()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, queue, url) = (client.clone(), queue.clone(), url.to_owned());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let Some(stream) = queue.lock().expect("lock").pop() else {
                    return samples;
                };
                let id = uuid::Uuid::new_v4().simple().to_string();
                let body = json!({"id": format!("evt_{id}"), "object": "event", "type": "issuing_authorization.request",
                    "data": {"object": {"id": format!("iauth_{id}"), "object": "issuing.authorization", "amount": 0,
                        "currency": "usd", "approved": false, "card": {"metadata": {"payment": stream}},
                        "merchant_data": {"network_id": "4445550001"},
                        "pending_request": {"amount": 1_200, "currency": "usd"}}}})
                .to_string();
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .header("stripe-signature", sign(&body))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("answer");
                let approved = answer.json::<serde_json::Value>().await.expect("json")["approved"] == true;
                samples.push(sent.elapsed());
                assert!(approved, "a fresh card within its cap is approved");
            }
        }));
    }
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.expect("worker"));
    }
    (samples, started.elapsed())
}

/// The raw baseline: read a stream's rows and insert the next one, in one transaction.
async fn raw_latencies(
    url: &str,
    requests: usize,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let raw = Arc::new(RawLog::open(url, concurrency).await);
    let started = Instant::now();
    let per_worker = requests / concurrency;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let raw = Arc::clone(&raw);
        workers.push(tokio::spawn(async move {
            let payload = json!({"approved": true, "amount": 1_200});
            let mut samples = Vec::new();
            for n in 0..per_worker {
                let sent = Instant::now();
                raw.load_and_append(&format!("s-{worker}-{n}"), &payload)
                    .await;
                samples.push(sent.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.expect("worker"));
    }
    (samples, started.elapsed())
}

#[tokio::main]
async fn main() {
    let requests: usize = env_or("BENCH_REQUESTS", 2_000);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let _telemetry = (std::env::var("BENCH_TRACING").as_deref() == Ok("1")).then(|| {
        shopagent::telemetry::init(&shopagent::telemetry::TelemetryConfig {
            log_filter: "warn".into(),
            traces_endpoint: None,
            service_name: "shopagent-bench".into(),
        })
        .expect("telemetry")
    });
    let (url, name) = create_pg_database().await;
    let config = StoreConfig::new(Some(url.clone()), "unused");
    let server = Server::build(
        &config,
        Authenticator::new(Some(b"bench-secret"), None),
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("server")
    .with_stripe_webhook_secret(Some(SECRET.into()));
    let address = server.local_addr().expect("address");
    let store = server.app().store.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server.run(shutdown.clone()));
    let webhook = format!("http://{address}/v1/webhooks/stripe");
    register_merchant(&store).await;

    println!(
        "| concurrency | requests | webhook answers/s | p50 ms | p95 ms | p99 ms | max ms | raw load+append/s | raw p50 ms | raw p99 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for concurrency in levels {
        let streams = payments(&store, requests).await;
        let (mut samples, elapsed) = webhook_latencies(&webhook, &streams, concurrency).await;
        let rate = samples.len() as f64 / elapsed.as_secs_f64();
        let [p50, p95, p99, max] = percentiles(&mut samples);
        let (mut raw, raw_elapsed) = raw_latencies(&url, requests, concurrency).await;
        let raw_rate = raw.len() as f64 / raw_elapsed.as_secs_f64();
        let [raw50, _, raw99, _] = percentiles(&mut raw);
        println!(
            "| {concurrency} | {requests} | {rate:.0} | {} | {} | {} | {} | {raw_rate:.0} | {} | {} |",
            ms(p50),
            ms(p95),
            ms(p99),
            ms(max),
            ms(raw50),
            ms(raw99)
        );
    }
    shutdown.cancel();
    let _ = running.await;
    drop_pg_database(&name).await;
}
