//! The log published to a real Kafka-protocol broker (tansu): every event arrives once,
//! in order per key, with its CloudEvents headers; a broker outage loses nothing and
//! keeps each key's order; a publisher stopped between the broker's acknowledgement and
//! its checkpoint sends duplicates, never a gap.

mod broker;
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::Broker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use shopagent_commands::publisher::LogPublisher;
use shopagent_commands::test_support::{TestStore, append_amounts};
use shopagent_commands::{Store, SubscriberRunner};
use shopagent_connectors::kafka::{KafkaConfig, KafkaStream};
use tokio_util::sync::CancellationToken;

/// One record as a consumer saw it.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    key: String,
    ce_id: String,
    sequence: i64,
    headers: HashMap<String, String>,
}

const TOPICS: [&str; 2] = ["test.carts", "test.orders"];

async fn publisher(brokers: &str) -> LogPublisher {
    let stream = KafkaStream::new(KafkaConfig::new(brokers)).expect("producer");
    let topics: Vec<String> = TOPICS.iter().map(|t| (*t).to_owned()).collect();
    stream.ensure_topics(&topics).await.expect("topics");
    LogPublisher::new(Arc::new(stream), "test.")
}

/// Appends `events` events to each of `streams` carts and orders; returns how many.
async fn append(store: &Store, round: usize, streams: usize, events: usize) -> usize {
    for s in 0..streams {
        for kind in ["cart", "order"] {
            let amounts: Vec<i64> = (1..=events as i64).collect();
            append_amounts(
                store,
                kind,
                &format!("acme/{kind}-{s}"),
                round * events,
                &amounts,
            )
            .await;
        }
    }
    streams * 2 * events
}

/// Waits until the publisher has sent every committed event.
async fn published(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = shopagent_projections::status(store, LogPublisher::NAME)
            .await
            .expect("status");
        if status.lag_events == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never published: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the topics from the start until `at_least` records arrived and no more come.
async fn consume(brokers: &str, at_least: usize) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&TOPICS).expect("subscribe");
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let quiet = if received.len() >= at_least {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Ok(Ok(message)) => {
                let headers: HashMap<String, String> = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let value: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap_or_default())
                        .expect("JSON value");
                received.push(Received {
                    topic: message.topic().to_owned(),
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    ce_id: headers.get("ce_id").cloned().unwrap_or_default(),
                    sequence: value["sequence"].as_i64().unwrap_or(-1),
                    headers,
                });
            }
            Ok(Err(error)) => panic!("consume: {error}"),
            Err(_) if received.len() >= at_least => return received,
            Err(_) => assert!(
                Instant::now() < deadline,
                "only {} of {at_least} records arrived",
                received.len()
            ),
        }
    }
}

/// Each key's records, in the order they arrived, first copies only: sequences 1, 2, …
fn assert_order_per_key(received: &[Received]) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for record in received {
        if !seen.insert(record.ce_id.clone()) {
            continue;
        }
        let previous = last.insert(&record.key, record.sequence).unwrap_or(0);
        assert_eq!(
            record.sequence,
            previous + 1,
            "{} arrived out of order",
            record.key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_per_key_with_its_cloudevents_headers() {
    // The fail point is global: the tests of this file run one at a time.
    let _exclusive = fail::FailScenario::setup();
    let Some(broker) = Broker::start() else {
        return;
    };
    let test = TestStore::postgres().await;
    let store = test.store.clone();
    let total = append(&store, 0, 4, 5).await;
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        SubscriberRunner::new(store.clone(), Arc::new(publisher(&broker.address()).await))
            .run(shutdown.clone()),
    );
    published(&store).await;
    let received = consume(&broker.address(), total).await;
    assert_eq!(received.len(), total, "each event once");
    let ids: HashSet<&str> = received.iter().map(|r| r.ce_id.as_str()).collect();
    assert_eq!(ids.len(), total);
    assert_order_per_key(&received);
    let cart = received
        .iter()
        .find(|r| r.key == "acme/cart-0" && r.sequence == 1)
        .expect("the first cart event");
    assert_eq!(cart.topic, "test.carts");
    for header in [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_subject",
        "ce_time",
    ] {
        assert!(
            cart.headers.contains_key(header),
            "{header} missing: {:?}",
            cart.headers
        );
    }
    assert_eq!(cart.headers["ce_type"], "shopagent.cart.Added.v1");
    assert_eq!(cart.headers["ce_subject"], "acme/cart-0");
    assert!(received.iter().any(|r| r.topic == "test.orders"));
    shutdown.cancel();
    runner.await.expect("publisher");
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_keeps_each_keys_order() {
    let _exclusive = fail::FailScenario::setup();
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let test = TestStore::postgres().await;
    let store = test.store.clone();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        SubscriberRunner::new(store.clone(), Arc::new(publisher(&broker.address()).await))
            .with_batch_size(7)
            .run(shutdown.clone()),
    );
    let mut total = append(&store, 0, 3, 4).await;
    published(&store).await;

    // The broker goes down; commands keep being appended meanwhile.
    broker.stop();
    total += append(&store, 1, 3, 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = shopagent_projections::status(&store, LogPublisher::NAME)
        .await
        .expect("status");
    assert!(
        waiting.lag_events > 0,
        "nothing can be published while the broker is down"
    );
    broker.restart();
    total += append(&store, 2, 3, 4).await;
    published(&store).await;

    let received = consume(&broker.address(), total).await;
    let ids: HashSet<&str> = received.iter().map(|r| r.ce_id.as_str()).collect();
    assert_eq!(ids.len(), total, "every event arrived (duplicates allowed)");
    assert_order_per_key(&received);
    shutdown.cancel();
    runner.await.expect("publisher");
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_stopped_after_the_send_and_before_its_checkpoint_duplicates_but_never_skips() {
    // The fail point is global: the tests of this file run one at a time.
    let _exclusive = fail::FailScenario::setup();
    let Some(broker) = Broker::start() else {
        return;
    };
    let test = TestStore::postgres().await;
    let store = test.store.clone();
    let total = append(&store, 0, 2, 5).await;
    let runner = SubscriberRunner::new(store.clone(), Arc::new(publisher(&broker.address()).await))
        .with_batch_size(6);
    // The first batch reaches the broker; the publisher stops before its checkpoint.
    fail::cfg("publisher/after/send", "1*return").expect("fail point");
    let stopped = runner.step().await.expect("step");
    assert!(stopped.failed && stopped.handled == 0, "{stopped:?}");
    fail::remove("publisher/after/send");
    // A new publisher (nothing in memory) resumes from the checkpoint.
    let resumed =
        SubscriberRunner::new(store.clone(), Arc::new(publisher(&broker.address()).await))
            .with_batch_size(6);
    while resumed.step().await.expect("step").handled > 0 {}
    published(&store).await;
    let received = consume(&broker.address(), total + 6).await;
    assert_eq!(
        received.len(),
        total + 6,
        "the first batch twice, the rest once"
    );
    let ids: HashSet<&str> = received.iter().map(|r| r.ce_id.as_str()).collect();
    assert_eq!(ids.len(), total, "no gap");
    assert_order_per_key(&received);
    test.cleanup().await;
}

/// `shopagent serve` with `KAFKA_BROKERS` set: what the API appends reaches its topic,
/// and the publisher's lag shows in the ops status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_brokers_publishes_what_its_api_appends() {
    let _exclusive = fail::FailScenario::setup();
    let Some(broker) = Broker::start() else {
        return;
    };
    let stream = KafkaStream::new(KafkaConfig::new(broker.address())).expect("producer");
    let app = common::spawn_app_with_server(common::Backend::Postgres, None, |server| {
        server.with_event_stream(Some((Arc::new(stream), "test.".to_owned())))
    })
    .await;
    let alice = app.shopper("alice");
    // The caller's trace continues: its traceparent travels with the event.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let created = app
        .client
        .post(app.url("/v1/carts"))
        .bearer_auth(&alice)
        .header("Idempotency-Key", "traced-cart")
        .header("traceparent", traceparent)
        .json(&serde_json::json!({"currency": "USD"}))
        .send()
        .await
        .expect("create a cart");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let ops = app.token("acme", "ops-1", shopagent::auth::Role::Ops, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let publisher = loop {
        let listed = app.get("/v1/ops/projections", &ops).await;
        let publisher = listed.body["projections"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["kind"] == "publisher").cloned())
            .expect("the publisher is listed");
        if publisher["lag_events"] == 0 {
            break publisher;
        }
        assert!(Instant::now() < deadline, "never published: {publisher}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(publisher["name"], LogPublisher::NAME);
    let received = consume(&broker.address(), 1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].topic, "test.carts");
    assert_eq!(
        received[0].headers["ce_type"],
        "shopagent.cart.CartCreated.v1"
    );
    app.stop().await;
}
