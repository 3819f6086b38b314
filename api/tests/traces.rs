//! Traces: the spans of one checkout reach an OTLP receiver, and one trace holds the
//! HTTP request, the commands it ran, and the checkout process manager's later steps
//! with their calls to the card issuer and the merchant.
//!
//! The receiver is a minimal OTLP/HTTP (protobuf) endpoint in this process; the server
//! exports to it through the same telemetry set-up `shopagent serve` uses.

mod broker;
mod common;

use std::collections::HashMap;
use std::io::BufReader;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::Backend;
use common::checkout::{check_out_in_trace, settled_order, world};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use shopagent::telemetry::{Telemetry, TelemetryConfig};
use shopagent_commands::test_support::TestStore;
use shopagent_commands::{CommandBus, LogCursor, Store};
use shopagent_connectors::kafka::{KafkaConfig, KafkaStream};
use shopagent_connectors::sandbox_merchant::FailureMode;
use shopagent_domain::EventMetadata;
use shopagent_domain::cart::{Cart, CartCommand};
use shopagent_domain::ids::CartId;
use shopagent_domain::money::Currency;
use shopagent_projections::AggregateCatalog;
use shopagent_projections::runner::ProjectionRunner;

/// `shopagent serve` exports to the endpoint its environment names, and a SIGTERM
/// exports what is still buffered before the process exits.
#[tokio::test]
async fn serve_exports_to_the_otlp_endpoint_of_its_environment_before_it_exits() {
    let collector = telemetry();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_shopagent"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env("SHOPAGENT_DATA_DIR", dir.path())
        .env("SHOPAGENT_LISTEN", "127.0.0.1:0")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", collector.address),
        )
        .env("OTEL_SERVICE_NAME", "shopagent-serve-test")
        // No periodic export in this test's time: only the one at shutdown.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shopagent");
    let mut logs = BufReader::new(server.stderr.take().expect("stderr"));
    let address = common::read_until(&mut logs, "shopagent listening")["address"]
        .as_str()
        .expect("address logged")
        .to_owned();
    let trace_id = hex::encode(uuid::Uuid::new_v4().as_bytes());
    let probed = reqwest::Client::new()
        .get(format!("http://{address}/healthz"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(probed.status(), reqwest::StatusCode::OK);
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(killed.success());
    assert_eq!(server.wait().expect("exit").code(), Some(0));

    let spans = collector.receiver.spans();
    let request = spans
        .iter()
        .find(|span| span.trace_id == trace_id)
        .expect("the request's span was exported before the process exited");
    assert_eq!(request.name, "GET /healthz");
    assert_eq!(request.service, "shopagent-serve-test");
    assert_eq!(request.parent_span_id, "00f067aa0ba902b7");
}

on_both_backends!(
    one_trace_follows_a_checkout_from_the_request_through_the_process_manager,
    the_publisher_sends_an_event_within_the_trace_that_appended_it,
    a_batch_is_a_child_of_the_one_trace_it_serves_and_linked_to_the_traces_it_mixes,
);

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: SpanKind,
    attributes: HashMap<String, String>,
    /// (trace id, span id) of each linked span.
    links: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }
}

async fn receive(State(receiver): State<Receiver>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let spans = request.resource_spans.into_iter().flat_map(|resource| {
        let service = resource
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| string(kv.value.clone()))
            .unwrap_or_default();
        resource
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
            .map(move |span| received(service.clone(), span))
    });
    receiver.spans.lock().expect("spans").extend(spans);
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn string(value: Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value) {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn received(service: String, span: Span) -> ReceivedSpan {
    ReceivedSpan {
        service,
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        parent_span_id: hex::encode(&span.parent_span_id),
        kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
        name: span.name,
        attributes: span
            .attributes
            .into_iter()
            .map(|kv| (kv.key, string(kv.value)))
            .collect(),
        links: span
            .links
            .into_iter()
            .map(|link| (hex::encode(link.trace_id), hex::encode(link.span_id)))
            .collect(),
    }
}

/// The receiver, where it listens, and this process's telemetry exporting to it.
struct Collector {
    receiver: Receiver,
    telemetry: Telemetry,
    address: SocketAddr,
}

/// The receiver and the process's telemetry, set up once for every test of this binary.
/// The receiver runs on a thread of its own: each test has its own runtime.
fn telemetry() -> &'static Collector {
    static TELEMETRY: OnceLock<Collector> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let receiver = Receiver::default();
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let state = receiver.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                address_tx
                    .send(listener.local_addr().expect("address"))
                    .expect("send the address");
                let app = axum::Router::new()
                    .route("/v1/traces", post(receive))
                    .with_state(state);
                axum::serve(listener, app).await.expect("receiver");
            });
        });
        let address = address_rx.recv().expect("receiver address");
        let telemetry = shopagent::telemetry::init(&TelemetryConfig {
            log_filter: "warn".into(),
            traces_endpoint: Some(format!("http://{address}/v1/traces")),
            service_name: "shopagent-test".into(),
        })
        .expect("telemetry");
        Collector {
            receiver,
            telemetry,
            address,
        }
    })
}

/// Every span received, once `complete` holds of them (or after 30 s).
async fn received_until(complete: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
    let Collector {
        receiver,
        telemetry,
        ..
    } = telemetry();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let flushing = telemetry.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .expect("flush");
        let spans = receiver.spans();
        if complete(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spans of `trace_id`, once `complete` holds of them.
async fn spans_of(trace_id: &str, complete: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
    let in_trace = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    };
    in_trace(&received_until(|spans| complete(&in_trace(spans))).await)
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// The names of `span`'s ancestors in `spans`, nearest first.
fn ancestors(spans: &[ReceivedSpan], span: &ReceivedSpan) -> Vec<String> {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut names = Vec::new();
    let mut current = span;
    while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
        names.push(parent.name.clone());
        current = parent;
    }
    names
}

const CHECKOUT: &str = "POST /v1/carts/{id}/checkout";
const PLACE_ORDER: &str = "checkout_process place order";

async fn one_trace_follows_a_checkout_from_the_request_through_the_process_manager(
    backend: Backend,
) {
    telemetry();
    let world = world(backend, FailureMode::None).await;
    let trace_id = hex::encode(uuid::Uuid::new_v4().as_bytes());
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let (_, order) = check_out_in_trace(&world.app, Some(&traceparent)).await;
    let placed = settled_order(&world.app, &order).await;
    assert_eq!(placed.body["status"], "placed", "{:?}", placed.body);

    let spans = spans_of(&trace_id, |spans| {
        ["merchant place_order", "checkout_process commit spend"]
            .iter()
            .all(|name| !named(spans, name).is_empty())
    })
    .await;
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();

    // The request continues the caller's trace.
    let [request] = named(&spans, CHECKOUT)[..] else {
        panic!("one {CHECKOUT} span expected among {names:?}");
    };
    assert_eq!(request.kind, SpanKind::Server);
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(request.attributes["http.route"], "/v1/carts/{id}/checkout");
    assert_eq!(request.attributes["http.response.status_code"], "200");

    // Its commands append inside it.
    let appends = named(&spans, "store append");
    assert!(!appends.is_empty(), "{names:?}");
    for append in &appends {
        let above = ancestors(&spans, append);
        assert!(above[0].ends_with(" command"), "{above:?}");
    }
    assert!(
        appends
            .iter()
            .any(|append| ancestors(&spans, append).contains(&CHECKOUT.to_owned())),
        "the request's own appends are in its trace"
    );

    // The process manager's steps, run later from the log, continue the command that
    // appended their cause, and so descend from the request.
    for step in [
        "checkout_process request card",
        "checkout_process issue card",
        PLACE_ORDER,
        "checkout_process commit spend",
    ] {
        let [span] = named(&spans, step)[..] else {
            panic!("one {step:?} span expected among {names:?}");
        };
        assert_eq!(span.kind, SpanKind::Consumer, "{step}");
        let above = ancestors(&spans, span);
        assert!(above[0].ends_with(" command"), "{step}: {above:?}");
        assert!(above.contains(&CHECKOUT.to_owned()), "{step}: {above:?}");
    }

    // Their calls out are client spans inside them.
    for (call, step) in [
        ("card_issuer create_card", "checkout_process issue card"),
        ("merchant place_order", PLACE_ORDER),
    ] {
        let [span] = named(&spans, call)[..] else {
            panic!("one {call:?} span expected among {names:?}");
        };
        assert_eq!(span.kind, SpanKind::Client, "{call}");
        assert_eq!(span.attributes["outcome"], "ok", "{call}");
        assert_eq!(ancestors(&spans, span)[0], step, "{call}");
    }

    // Nothing in the trace hangs from a span that never arrived: the caller's span is
    // its only outside parent.
    let ids: Vec<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    for span in &spans {
        assert!(
            ids.contains(&span.parent_span_id.as_str()) || span.parent_span_id == caller_span,
            "{} hangs from a span not in the trace",
            span.name
        );
    }

    // The orders hub projected the order in a batch that belongs to the trace or links
    // to it.
    let hub_batch_in_trace = |spans: &[ReceivedSpan]| {
        spans.iter().any(|span| {
            span.name == "orders_hub batch"
                && (span.trace_id == trace_id || span.links.iter().any(|(t, _)| *t == trace_id))
        })
    };
    assert!(
        hub_batch_in_trace(&received_until(hub_batch_in_trace).await),
        "no orders_hub batch joined the trace"
    );
    world.app.stop().await;
}

async fn the_publisher_sends_an_event_within_the_trace_that_appended_it(backend: Backend) {
    telemetry();
    let Some(broker) = broker::Broker::start() else {
        return;
    };
    let stream = KafkaStream::new(KafkaConfig::new(broker.address())).expect("producer");
    let app = common::spawn_app_with_server(backend, None, |server| {
        server.with_event_stream(Some((Arc::new(stream), "traces.".to_owned())))
    })
    .await;
    let trace_id = hex::encode(uuid::Uuid::new_v4().as_bytes());
    let created = app
        .client
        .post(app.url("/v1/carts"))
        .bearer_auth(app.shopper("alice"))
        .header("Idempotency-Key", "traced-cart")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"currency": "USD"}))
        .send()
        .await
        .expect("create a cart");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);

    // The one event of the trace is published in a batch that is a child of the
    // command that appended it, or, sent with events of other traces, linked to it.
    let joins_trace = |span: &ReceivedSpan| {
        span.trace_id == trace_id || span.links.iter().any(|(t, _)| *t == trace_id)
    };
    let spans = received_until(|spans| {
        spans.iter().any(|span| {
            span.name == "kafka publish"
                && spans
                    .iter()
                    .any(|batch| batch.span_id == span.parent_span_id && joins_trace(batch))
        })
    })
    .await;
    let batch = spans
        .iter()
        .find(|span| span.name == "publish batch" && joins_trace(span))
        .expect("a publish batch joined the trace");
    assert_eq!(batch.kind, SpanKind::Producer);
    let send = spans
        .iter()
        .find(|span| span.name == "kafka publish" && span.parent_span_id == batch.span_id)
        .expect("the send is inside the batch");
    assert_eq!(send.kind, SpanKind::Client);
    assert_eq!(send.attributes["outcome"], "ok");
    if batch.trace_id == trace_id {
        let appended_by = spans
            .iter()
            .find(|span| span.span_id == batch.parent_span_id)
            .expect("the batch's parent arrived");
        assert_eq!(appended_by.name, "cart command");
    }
    app.stop().await;
}

/// Creates a cart under the span `traceparent` names; returns that span's id.
async fn create_cart(carts: &CommandBus<Cart>, traceparent: &str) -> String {
    let mut metadata = EventMetadata::new("acme", "test");
    metadata.traceparent = Some(traceparent.to_owned());
    let cart_id = CartId::new();
    let create = CartCommand::Create {
        cart_id,
        shopper: "alice".into(),
        mandate_id: None,
        currency: Currency::parse("USD").expect("USD"),
        at: time::OffsetDateTime::now_utc(),
    };
    carts
        .execute(&format!("acme/{cart_id}"), create, metadata)
        .await
        .expect("create a cart");
    traceparent.split('-').nth(2).expect("span id").to_owned()
}

/// Waits until the `count` events after `after` can be read (on PostgreSQL an event
/// committed is readable once no older transaction is in flight); returns the cursor
/// past them.
async fn readable(store: &Store, after: LogCursor, count: usize) -> LogCursor {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = store.read_log(after, 100).await.expect("read the log");
        if events.len() == count {
            return events[count - 1].cursor;
        }
        assert!(
            Instant::now() < deadline,
            "{} events readable",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_batch_is_a_child_of_the_one_trace_it_serves_and_linked_to_the_traces_it_mixes(
    backend: Backend,
) {
    telemetry();
    let test = match backend {
        Backend::Sqlite => TestStore::sqlite().await,
        Backend::Postgres => TestStore::postgres().await,
    };
    // Commands run outside any span here: each continues the traceparent it is given.
    let carts = CommandBus::<Cart>::new(test.store.clone());
    let catalog = ProjectionRunner::new(test.store.clone(), Arc::new(AggregateCatalog));
    let trace = || hex::encode(uuid::Uuid::new_v4().as_bytes());
    let traceparent = |trace: &str, span: &str| format!("00-{trace}-{span}-01");

    let shared = trace();
    let first = create_cart(&carts, &traceparent(&shared, "1000000000000001")).await;
    let second = create_cart(&carts, &traceparent(&shared, "1000000000000002")).await;
    let after_first = readable(&test.store, LogCursor::START, 2).await;
    assert_eq!(catalog.step().await.expect("first batch"), 2);
    let (one, other) = (trace(), trace());
    create_cart(&carts, &traceparent(&one, "2000000000000001")).await;
    create_cart(&carts, &traceparent(&other, "2000000000000002")).await;
    readable(&test.store, after_first, 2).await;
    assert_eq!(catalog.step().await.expect("second batch"), 2);

    let is_batch_of = |span: &ReceivedSpan, traces: &[&str]| {
        span.name == "aggregate_catalog batch"
            && traces
                .iter()
                .all(|t| span.trace_id == *t || span.links.iter().any(|(l, _)| l == t))
    };
    let spans = received_until(|spans| {
        spans.iter().any(|s| is_batch_of(s, &[&shared]))
            && spans.iter().any(|s| is_batch_of(s, &[&one, &other]))
    })
    .await;
    let shared_batch = spans
        .iter()
        .find(|span| is_batch_of(span, &[&shared]))
        .expect("the first batch arrived");
    // The command that appended an event is a child of the span it was given.
    let command_under = |parent: &str| {
        spans
            .iter()
            .find(|span| {
                span.name == "cart command"
                    && span.trace_id == shared
                    && span.parent_span_id == parent
            })
            .unwrap_or_else(|| panic!("no cart command under {parent}"))
    };
    assert_eq!(shared_batch.trace_id, shared, "one trace: its child");
    assert_eq!(shared_batch.parent_span_id, command_under(&first).span_id);
    assert_eq!(
        shared_batch.links,
        [(shared.clone(), command_under(&second).span_id.clone())]
    );

    let mixed_batch = spans
        .iter()
        .find(|span| is_batch_of(span, &[&one, &other]))
        .expect("the second batch arrived");
    assert!(
        mixed_batch.trace_id != one && mixed_batch.trace_id != other,
        "two traces: a root of its own"
    );
    assert_eq!(mixed_batch.parent_span_id, "");
    let mut linked: Vec<&str> = mixed_batch.links.iter().map(|(t, _)| t.as_str()).collect();
    linked.sort_unstable();
    let mut expected = [one.as_str(), other.as_str()];
    expected.sort_unstable();
    assert_eq!(linked, expected);
    test.cleanup().await;
}
