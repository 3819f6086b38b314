//! Fulfillment reported from outside — merchant order events, carrier tracking — applied
//! to an order, each update once.
//!
//! Senders deliver at least once and not always in order (a merchant resends its whole
//! order entity on every change). Each update carries its sender's id; the command it
//! becomes is idempotent under a key derived from the source, the order and that id, so
//! a redelivery appends nothing. An update the order's state does not allow (a second
//! "delivered", a shipment of a cancelled order) is reported as not applicable and
//! changes nothing; a sender that later resends it in a state that allows it is heard.

use sha2::{Digest, Sha256};
use shopagent_domain::EventMetadata;
use shopagent_domain::IdempotencyKey;
use shopagent_domain::ids::{RefundId, ReturnId};
use shopagent_domain::order::{Order, OrderCommand, ReturnStatus};
use shopagent_domain::ports::{FulfillmentUpdate, ReportedUpdate};
use uuid::Uuid;

use crate::{CommandBus, CommandError};

const UPDATE_NAMESPACE: Uuid = Uuid::from_u128(0x9d3a_51c0_6e2b_4f7a_8c14_0b6e_d2f9_3a75);

/// What happened to each update of a delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Updates that changed the order.
    pub applied: usize,
    /// Updates seen before (redeliveries).
    pub repeated: usize,
    /// Updates the order's state refused, with why.
    pub not_applicable: Vec<(String, String)>,
}

/// Applies `updates` from `source` (e.g. `ucp:acme`) to the order in `order_stream`.
/// `base` carries the tenant, principal and correlation of the delivery.
pub async fn apply_updates(
    orders: &CommandBus<Order>,
    order_stream: &str,
    source: &str,
    updates: &[ReportedUpdate],
    base: &EventMetadata,
) -> Result<Applied, CommandError<shopagent_domain::order::OrderError>> {
    let mut applied = Applied::default();
    for reported in updates {
        let intent = format!("{source}/{order_stream}/{}", reported.id);
        let (order, _) = orders.load(order_stream).await?;
        let commands = commands_for(&order, &intent, reported);
        if commands.is_empty() {
            applied
                .not_applicable
                .push((reported.id.clone(), "no return has this RMA".into()));
        }
        for (step, command) in commands.into_iter().enumerate() {
            let mut metadata = base.clone();
            let key = format!("update/{}/{step}", hex::encode(Sha256::digest(&intent)));
            metadata.idempotency_key = IdempotencyKey::parse(&key).ok();
            metadata.request_digest = Some(key);
            match orders.execute(order_stream, command, metadata).await {
                Ok(outcome) if outcome.replayed => applied.repeated += 1,
                Ok(_) => applied.applied += 1,
                Err(CommandError::Rejected(why)) => {
                    tracing::info!(update = %reported.id, %why, "reported update not applicable");
                    applied
                        .not_applicable
                        .push((reported.id.clone(), why.to_string()));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
    }
    Ok(applied)
}

/// The commands an update becomes on this order (a return the merchant accepted that
/// the shopper did not request through shopagent is requested first).
fn commands_for(order: &Order, intent: &str, reported: &ReportedUpdate) -> Vec<OrderCommand> {
    use FulfillmentUpdate as U;
    let at = reported.at;
    let derived =
        |what: &str| Uuid::new_v5(&UPDATE_NAMESPACE, format!("{intent}/{what}").as_bytes());
    match &reported.update {
        U::Confirmed => vec![OrderCommand::Confirm { at }],
        U::Shipped {
            carrier,
            tracking_number,
        } => vec![OrderCommand::Ship {
            carrier: carrier.clone(),
            tracking_number: tracking_number.clone(),
            at,
        }],
        U::OutForDelivery => vec![OrderCommand::MarkOutForDelivery { at }],
        U::Delivered => vec![OrderCommand::MarkDelivered { at }],
        U::DeliveryException { detail } => vec![OrderCommand::ReportDeliveryException {
            detail: detail.clone(),
            at,
        }],
        U::Cancelled { reason } => vec![OrderCommand::Cancel {
            reason: reason.clone(),
            at,
        }],
        U::ReturnAccepted { rma } => {
            if let Some(return_id) = order.return_with_rma(rma) {
                // Seen before: issuing it again is refused as out of order, harmlessly.
                return vec![OrderCommand::IssueRma {
                    return_id,
                    rma: rma.clone(),
                    at,
                }];
            }
            let open = order
                .returns
                .iter()
                .find(|(_, status)| **status == ReturnStatus::Requested)
                .map(|(id, _)| *id);
            match open {
                Some(return_id) => vec![OrderCommand::IssueRma {
                    return_id,
                    rma: rma.clone(),
                    at,
                }],
                None => {
                    let return_id = ReturnId(derived("return"));
                    vec![
                        OrderCommand::RequestReturn {
                            return_id,
                            reason: "return arranged with the merchant".into(),
                            at,
                        },
                        OrderCommand::IssueRma {
                            return_id,
                            rma: rma.clone(),
                            at,
                        },
                    ]
                }
            }
        }
        U::ReturnReceived { rma } => match order.return_with_rma(rma) {
            Some(return_id) => vec![OrderCommand::MarkReturned { return_id, at }],
            None => Vec::new(),
        },
        U::Refunded { amount, .. } => {
            // A refund follows the return it settles, when exactly one awaits one.
            let mut returned = order.returns_awaiting_refund();
            let return_id = match (returned.next(), returned.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            };
            vec![OrderCommand::Refund {
                refund_id: RefundId(derived("refund")),
                return_id,
                amount: *amount,
                at,
            }]
        }
    }
}
