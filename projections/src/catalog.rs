//! `aggregate_catalog`: every stream in the log, with its tenant, version and last event.
//!
//! The first read model, and the one ops use to find a stream. It also serves as the
//! runner's reference projection in tests.

use shopagent_commands::StoredEvent;
use shopagent_commands::log::format_timestamp;

use crate::on_read_model;
use crate::rows::{OnConflict, upsert};
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
        let rows = streams
            .into_iter()
            .map(|(aggregate_type, aggregate_id, first_at, last)| {
                vec![
                    aggregate_type.into(),
                    aggregate_id.into(),
                    last.metadata.tenant.as_str().into(),
                    last.sequence.into(),
                    last.event_type.as_str().into(),
                    last.position().into(),
                    first_at.into(),
                    format_timestamp(last.recorded_at).into(),
                ]
            })
            .collect();
        upsert(
            tx,
            "aggregate_catalog",
            &[
                "aggregate_type",
                "aggregate_id",
                "tenant",
                "version",
                "last_event_type",
                "last_position",
                "created_at",
                "updated_at",
            ],
            &["aggregate_type", "aggregate_id"],
            OnConflict::Overwrite(&["version", "last_event_type", "last_position", "updated_at"]),
            rows,
        )
        .await
    }

    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        on_read_model!(tx, conn => {
            sqlx::query("DELETE FROM aggregate_catalog").execute(conn).await?;
        });
        Ok(())
    }
}
