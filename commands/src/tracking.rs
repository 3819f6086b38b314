//! The tracking process: when an order ships, its parcel is registered with the
//! carrier-tracking provider, which then reports the parcel's progress by webhook.
//! Driven from the log by a checkpointed subscriber; registering is idempotent (one
//! tracker per order, keyed by the order), so handling an event again repeats nothing.

use std::sync::Arc;

use serde::Deserialize;
use shopagent_domain::order::OrderEvent;
use shopagent_domain::ports::{CallError, TrackParcel, TrackingProvider};

use tracing::Instrument;

use crate::StoredEvent;
use crate::subscriber::{HandlerError, Subscriber, call_out, call_outcome};
use crate::trace;

pub struct TrackingProcess {
    pub provider: Arc<dyn TrackingProvider>,
}

impl std::fmt::Debug for TrackingProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingProcess").finish_non_exhaustive()
    }
}

impl TrackingProcess {
    pub const NAME: &'static str = "tracking_process";
}

#[async_trait::async_trait]
impl Subscriber for TrackingProcess {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn acts_on(&self, event: &StoredEvent) -> bool {
        is_shipment(event)
    }

    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let Some(OrderEvent::OrderShipped {
            carrier,
            tracking_number,
            ..
        }) = shipment(event)
        else {
            return Ok(());
        };
        let parcel = TrackParcel {
            idempotency_key: format!("track/{}/{tracking_number}", event.aggregate_id),
            carrier,
            tracking_number,
        };
        let step = async {
            let tracked = call_out(
                "tracking",
                "track",
                self.provider.track(&parcel),
                call_outcome,
            )
            .await;
            match tracked {
                Ok(tracker) => {
                    tracing::info!(order = %event.aggregate_id, %tracker, "parcel tracked");
                    Ok(())
                }
                Err(CallError::Unavailable(why)) => Err(HandlerError(format!(
                    "tracking provider unavailable: {why}"
                ))),
                // A carrier or number the provider refuses will not change on retry; the
                // merchant's own updates still reach the order.
                Err(CallError::Refused(why)) => {
                    tracing::warn!(order = %event.aggregate_id, %why, "parcel not tracked");
                    Ok(())
                }
            }
        };
        step.instrument(trace::event_span(Self::NAME, "track", event))
            .await
    }
}

/// Whether the event is an order shipped, the one the process acts on: by its name,
/// before its payload is read.
fn is_shipment(event: &StoredEvent) -> bool {
    event.aggregate_type == "order" && event.event_type == "OrderShipped"
}

/// The event, when it is an order shipped.
fn shipment(event: &StoredEvent) -> Option<OrderEvent> {
    if !is_shipment(event) {
        return None;
    }
    OrderEvent::deserialize(&event.payload)
        .ok()
        .filter(|order| matches!(order, OrderEvent::OrderShipped { .. }))
}
