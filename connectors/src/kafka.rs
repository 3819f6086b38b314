//! The event stream on a Kafka-protocol broker (rdkafka, librdkafka bundled).
//!
//! The producer is idempotent with `acks=all`: the broker keeps each partition's
//! records in the order sent, without duplicates from the producer's own retries, and
//! acknowledges a record once every in-sync replica has it. [`KafkaStream::publish`]
//! queues a whole batch, then waits for every acknowledgement; the first failure fails
//! the batch (which the publisher sends again).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shopagent_domain::ports::{EventStream, OutboundRecord, PublishError};

/// Where the broker is and how the stream's topics are made.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub client_id: String,
    /// Partitions of the topics this stream creates.
    pub partitions: i32,
    /// How long a record may wait for its acknowledgement (retried meanwhile).
    pub delivery_timeout: Duration,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: "shopagent".into(),
            partitions: 3,
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

/// Publishes records to a Kafka-protocol broker.
pub struct KafkaStream {
    producer: FutureProducer,
    config: KafkaConfig,
}

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("brokers", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaStream {
    /// Creates the producer. No connection is made until the first record.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", &config.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .create()?;
        Ok(Self { producer, config })
    }

    /// Creates `topics` with the configured partitions; topics that exist are left as
    /// they are.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|topic| NewTopic::new(topic, self.config.partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for outcome in admin.create_topics(&new, &options).await? {
            match outcome {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::warn!(%topic, %code, "topic not created");
                    });
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventStream for KafkaStream {
    async fn publish(&self, records: Vec<OutboundRecord>) -> Result<(), PublishError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let headers = record.headers.iter().fold(
                OwnedHeaders::new_with_capacity(record.headers.len()),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                },
            );
            let message = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.value)
                .headers(headers);
            // Queued in order; the local queue (100 000 records) holds far more than a
            // batch, and each batch is acknowledged before the next is queued.
            let delivery = self
                .producer
                .send_result(message)
                .map_err(|(error, _)| PublishError(error.to_string()))?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(PublishError(error.to_string())),
                Err(_) => return Err(PublishError("the producer was dropped".into())),
            }
        }
        Ok(())
    }
}
