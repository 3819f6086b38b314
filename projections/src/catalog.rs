//! `aggregate_catalog`: every stream in the log, with its tenant, version and last event.
//!
//! The first read model, and the one ops use to find a stream. It also serves as the
//! runner's reference projection in tests.

use shopagent_commands::StoredEvent;
use shopagent_commands::log::format_timestamp;

use crate::on_read_model;
use crate::runner::{Projection, ProjectionError, ReadModelTx};

#[derive(Debug, Default, Clone, Copy)]
pub struct AggregateCatalog;

impl AggregateCatalog {
    pub const NAME: &'static str = "aggregate_catalog";
}

#[async_trait::async_trait]
impl Projection for AggregateCatalog {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["aggregate_catalog"]
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        let at = format_timestamp(event.recorded_at);
        on_read_model!(tx, conn => {
            sqlx::query(
                "INSERT INTO aggregate_catalog (aggregate_type, aggregate_id, tenant, version,
                                                last_event_type, last_position, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET
                    version = excluded.version,
                    last_event_type = excluded.last_event_type,
                    last_position = excluded.last_position,
                    updated_at = excluded.updated_at",
            )
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(&event.metadata.tenant)
            .bind(event.sequence)
            .bind(&event.event_type)
            .bind(event.position())
            .bind(&at)
            .execute(conn)
            .await?;
        });
        Ok(())
    }

    /// One statement per batch: each stream's last event in the batch wins (its version
    /// and position only grow), and a new stream's row starts at its first.
    async fn apply_batch(
        &self,
        tx: &mut ReadModelTx<'_>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        // (first recorded_at, last event) per stream, in order of first appearance.
        let mut streams: Vec<(&str, &str, String, &StoredEvent)> = Vec::new();
        let mut index: std::collections::HashMap<(&str, &str), usize> =
            std::collections::HashMap::with_capacity(events.len());
        for event in events {
            let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
            match index.get(&key) {
                Some(&at) => streams[at].3 = event,
                None => {
                    index.insert(key, streams.len());
                    streams.push((key.0, key.1, format_timestamp(event.recorded_at), event));
                }
            }
        }
        // Bind parameters per statement stay well under every backend's limit.
        for chunk in streams.chunks(1_000) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 8;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7,
                        p + 8
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO aggregate_catalog (aggregate_type, aggregate_id, tenant, version,
                                                last_event_type, last_position, created_at, updated_at)
                 VALUES {}
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET
                    version = excluded.version,
                    last_event_type = excluded.last_event_type,
                    last_position = excluded.last_position,
                    updated_at = excluded.updated_at",
                rows.join(", ")
            );
            on_read_model!(tx, conn => {
                let mut query = sqlx::query(&sql);
                for (aggregate_type, aggregate_id, first_at, last) in chunk {
                    query = query
                        .bind(*aggregate_type)
                        .bind(*aggregate_id)
                        .bind(&last.metadata.tenant)
                        .bind(last.sequence)
                        .bind(&last.event_type)
                        .bind(last.position())
                        .bind(first_at)
                        .bind(format_timestamp(last.recorded_at));
                }
                query.execute(conn).await?;
            });
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        on_read_model!(tx, conn => {
            sqlx::query("DELETE FROM aggregate_catalog").execute(conn).await?;
        });
        Ok(())
    }
}
