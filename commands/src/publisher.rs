//! The event stream publisher: a checkpointed subscriber that sends every event of the
//! log to an [`EventStream`] (Kafka), in commit order, batch by batch. Nothing publishes
//! from request handlers: what is in the log reaches the stream, and nothing else does.
//!
//! Each event goes to its aggregate category's topic (`{prefix}carts`, `…orders`,
//! `…payments`, `…mandates`, `…runs`, `…merchants`), keyed by its aggregate id, so the
//! order of one aggregate's events holds within its partition. The value is the event as
//! JSON; the headers carry its CloudEvents attributes (`ce_specversion`, `ce_id` = the
//! event id, `ce_type`, `ce_source`, `ce_subject`, `ce_time`) and the W3C `traceparent`
//! of the request that caused it, when there was one.
//!
//! The checkpoint moves past a batch only after the stream acknowledged all of it. A
//! batch that fails, or a publisher that dies between the acknowledgement and the
//! checkpoint, sends the batch again: delivery is at least once, and consumers drop
//! duplicates by `ce_id`.

use std::sync::Arc;

use serde_json::json;
use shopagent_domain::ports::{EventStream, OutboundRecord};
use tracing::Instrument;

use crate::StoredEvent;
use crate::log::format_timestamp;
use crate::subscriber::{HandlerError, Subscriber, call_out};

/// Publishes the log to an event stream.
pub struct LogPublisher {
    stream: Arc<dyn EventStream>,
    topic_prefix: String,
}

impl std::fmt::Debug for LogPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPublisher")
            .field("topic_prefix", &self.topic_prefix)
            .finish_non_exhaustive()
    }
}

impl LogPublisher {
    pub const NAME: &'static str = "kafka_publisher";
    pub const DEFAULT_TOPIC_PREFIX: &'static str = "shopagent.";

    pub fn new(stream: Arc<dyn EventStream>, topic_prefix: impl Into<String>) -> Self {
        Self {
            stream,
            topic_prefix: topic_prefix.into(),
        }
    }

    /// The topic of an aggregate type's events.
    pub fn topic(&self, aggregate_type: &str) -> String {
        let category = match aggregate_type {
            "cart" => "carts",
            "order" => "orders",
            "payment" => "payments",
            "mandate" => "mandates",
            "agent_run" => "runs",
            "merchant" => "merchants",
            other => other,
        };
        format!("{}{category}", self.topic_prefix)
    }

    /// The record an event becomes.
    pub fn record(&self, event: &StoredEvent) -> OutboundRecord {
        let time = format_timestamp(event.recorded_at);
        let value = json!({
            "event_id": event.event_id,
            "position": event.position(),
            "tenant": event.metadata.tenant,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "sequence": event.sequence,
            "event_type": event.event_type,
            "event_version": event.event_version,
            "recorded_at": time,
            "correlation_id": event.metadata.correlation_id,
            "causation_id": event.metadata.causation_id,
            "payload": event.payload,
        });
        let mut headers = vec![
            ("ce_specversion".to_owned(), "1.0".to_owned()),
            ("ce_id".to_owned(), event.event_id.to_string()),
            (
                "ce_type".to_owned(),
                format!(
                    "shopagent.{}.{}.v{}",
                    event.aggregate_type, event.event_type, event.event_version
                ),
            ),
            (
                "ce_source".to_owned(),
                format!(
                    "/shopagent/{}/{}",
                    event.metadata.tenant, event.aggregate_type
                ),
            ),
            ("ce_subject".to_owned(), event.aggregate_id.clone()),
            ("ce_time".to_owned(), time),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        if let Some(traceparent) = &event.metadata.traceparent {
            headers.push(("traceparent".to_owned(), traceparent.clone()));
        }
        OutboundRecord {
            topic: self.topic(&event.aggregate_type),
            key: event.aggregate_id.clone(),
            value: value.to_string().into_bytes(),
            headers,
        }
    }
}

/// Where the crash tests stop the publisher after the stream acknowledged a batch and
/// before its checkpoint (`publisher/after/send`, with the `failpoints` feature).
fn crash_point() -> Result<(), HandlerError> {
    fail::fail_point!("publisher/after/send", |_| Err(HandlerError(
        "stopped after the send, before the checkpoint".into()
    )));
    Ok(())
}

#[async_trait::async_trait]
impl Subscriber for LogPublisher {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn batched(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "publish batch",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.batch.message_count = events.len(),
        );
        crate::trace::join_batch(&span, events);
        let records = events.iter().map(|event| self.record(event)).collect();
        let published = call_out("kafka", "publish", self.stream.publish(records), |sent| {
            if sent.is_ok() { "ok" } else { "unavailable" }
        })
        .instrument(span)
        .await;
        published.map_err(|error| HandlerError(error.to_string()))?;
        crash_point()
    }
}
