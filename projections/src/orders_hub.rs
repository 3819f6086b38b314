//! `orders_hub`: per shopper, every order across merchants and paths, with its status,
//! totals, tracking and timeline — the orders list of the product.

use serde_json::{Value, json};
use shopagent_commands::StoredEvent;
use shopagent_commands::log::format_timestamp;
use shopagent_domain::order::{CheckoutPath, OrderEvent};

use crate::on_read_model;
use crate::runner::{Projection, ProjectionError, ReadModelTx};

#[derive(Debug, Default, Clone, Copy)]
pub struct OrdersHub;

impl OrdersHub {
    pub const NAME: &'static str = "orders_hub";
}

fn path_name(path: CheckoutPath) -> &'static str {
    match path {
        CheckoutPath::Api => "api",
        CheckoutPath::Deeplink => "deeplink",
        CheckoutPath::Headless => "headless",
    }
}

/// What an event changes on an existing row: new status (if any), extra column values
/// and the timeline entry.
struct Change {
    status: Option<&'static str>,
    reference: Option<String>,
    tracking: Option<(String, String)>,
    refunded: i64,
    entry: Value,
}

fn change(event: &OrderEvent, at: &str) -> Option<Change> {
    use OrderEvent as E;
    let plain = |status: &'static str, what: &str| Change {
        status: Some(status),
        reference: None,
        tracking: None,
        refunded: 0,
        entry: json!({"at": at, "event": what}),
    };
    Some(match event {
        E::OrderCreated { .. } => return None,
        E::OrderSubmitted { .. } => plain("submitted", "submitted"),
        E::OrderPlaced {
            merchant_reference, ..
        } => Change {
            reference: Some(merchant_reference.clone()),
            ..plain("placed", "placed")
        },
        E::OrderFailed { reason, detail, .. } => Change {
            entry: json!({"at": at, "event": "failed", "reason": reason, "detail": detail}),
            ..plain("failed", "failed")
        },
        E::PlacementAttemptFailed {
            attempt, detail, ..
        } => Change {
            status: None,
            entry: json!({"at": at, "event": "merchant_unavailable", "attempt": attempt, "detail": detail}),
            ..plain("", "")
        },
        E::OrderConfirmed { .. } => plain("confirmed", "confirmed"),
        E::OrderShipped {
            carrier,
            tracking_number,
            ..
        } => Change {
            tracking: Some((carrier.clone(), tracking_number.clone())),
            entry: json!({"at": at, "event": "shipped", "carrier": carrier, "tracking_number": tracking_number}),
            ..plain("shipped", "shipped")
        },
        E::OrderOutForDelivery { .. } => plain("out_for_delivery", "out_for_delivery"),
        E::OrderDelivered { .. } => plain("delivered", "delivered"),
        E::DeliveryExceptionReported { detail, .. } => Change {
            entry: json!({"at": at, "event": "delivery_exception", "detail": detail}),
            ..plain("delivery_exception", "delivery_exception")
        },
        E::OrderCancelled { reason, .. } => Change {
            entry: json!({"at": at, "event": "cancelled", "reason": reason}),
            ..plain("cancelled", "cancelled")
        },
        E::ReturnRequested {
            return_id, reason, ..
        } => Change {
            status: None,
            entry: json!({"at": at, "event": "return_requested", "return_id": return_id, "reason": reason}),
            ..plain("", "")
        },
        E::RmaIssued { return_id, rma, .. } => Change {
            status: None,
            entry: json!({"at": at, "event": "rma_issued", "return_id": return_id, "rma": rma}),
            ..plain("", "")
        },
        E::ItemsReturned { return_id, .. } => Change {
            status: None,
            entry: json!({"at": at, "event": "returned", "return_id": return_id}),
            ..plain("", "")
        },
        E::OrderRefunded { amount, .. } => Change {
            status: None,
            refunded: amount.minor,
            entry: json!({"at": at, "event": "refunded", "amount": amount}),
            ..plain("", "")
        },
    })
}

#[async_trait::async_trait]
impl Projection for OrdersHub {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orders_hub"]
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        if event.aggregate_type != "order" {
            return Ok(());
        }
        let order: OrderEvent = serde_json::from_value(event.payload.clone()).map_err(|error| {
            ProjectionError::Event {
                position: event.position(),
                reason: error.to_string(),
            }
        })?;
        let tenant = &event.metadata.tenant;
        let at = format_timestamp(event.recorded_at);
        if let OrderEvent::OrderCreated {
            order_id, draft, ..
        } = &order
        {
            let timeline = json!([{"at": at, "event": "created", "path": path_name(draft.path), "reason": draft.path_reason}]).to_string();
            on_read_model!(tx, conn => {
                sqlx::query(
                    "INSERT INTO orders_hub (tenant, order_id, shopper, mandate_id, merchant, path, status, total_minor,
                                             currency, timeline, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'created', $7, $8, $9, $10, $10)
                     ON CONFLICT (tenant, order_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(order_id.to_string())
                .bind(&draft.shopper)
                .bind(draft.mandate_id.map(|m| m.to_string()))
                .bind(draft.merchant.as_str())
                .bind(path_name(draft.path))
                .bind(draft.total.minor)
                .bind(draft.total.currency.code())
                .bind(&timeline)
                .bind(&at)
                .execute(conn)
                .await?;
            });
            return Ok(());
        }
        let Some(change) = change(&order, &at) else {
            return Ok(());
        };
        let order_id = event
            .aggregate_id
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let timeline: Option<String> = on_read_model!(tx, conn => {
            sqlx::query_scalar("SELECT timeline FROM orders_hub WHERE tenant = $1 AND order_id = $2")
                .bind(tenant)
                .bind(&order_id)
                .fetch_optional(conn)
                .await?
        });
        let Some(timeline) = timeline else {
            return Ok(());
        };
        let mut entries: Vec<Value> = serde_json::from_str(&timeline).unwrap_or_default();
        entries.push(change.entry);
        let timeline = Value::from(entries).to_string();
        let (carrier, tracking) = change.tracking.unzip();
        on_read_model!(tx, conn => {
            sqlx::query(
                "UPDATE orders_hub SET
                    status = COALESCE($3, status),
                    merchant_reference = COALESCE($4, merchant_reference),
                    carrier = COALESCE($5, carrier),
                    tracking_number = COALESCE($6, tracking_number),
                    refunded_minor = refunded_minor + $7,
                    timeline = $8,
                    updated_at = $9
                 WHERE tenant = $1 AND order_id = $2",
            )
            .bind(tenant)
            .bind(&order_id)
            .bind(change.status)
            .bind(change.reference)
            .bind(carrier)
            .bind(tracking)
            .bind(change.refunded)
            .bind(&timeline)
            .bind(&at)
            .execute(conn)
            .await?;
        });
        Ok(())
    }

    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        on_read_model!(tx, conn => {
            sqlx::query("DELETE FROM orders_hub").execute(conn).await?;
        });
        Ok(())
    }
}

/// How a party outside shopagent names an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideReference<'a> {
    /// The merchant's own order id.
    Merchant {
        merchant: &'a str,
        reference: &'a str,
    },
    /// The carrier's tracking number.
    Tracking(&'a str),
}

/// The id and currency of the order `by` names, once the hub has caught up with it.
pub async fn find_order(
    db: &shopagent_commands::Database,
    tenant: &str,
    by: OutsideReference<'_>,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let (sql, binds): (&str, Vec<&str>) = match by {
        OutsideReference::Merchant {
            merchant,
            reference,
        } => (
            "SELECT order_id, currency FROM orders_hub
              WHERE tenant = $1 AND merchant = $2 AND merchant_reference = $3",
            vec![tenant, merchant, reference],
        ),
        OutsideReference::Tracking(number) => (
            "SELECT order_id, currency FROM orders_hub
              WHERE tenant = $1 AND tracking_number = $2
              ORDER BY created_at DESC LIMIT 1",
            vec![tenant, number],
        ),
    };
    match db {
        shopagent_commands::Database::Postgres(pool) => {
            let mut query = sqlx::query_as(sql);
            for value in binds {
                query = query.bind(value);
            }
            query.fetch_optional(pool).await
        }
        shopagent_commands::Database::Sqlite(pool) => {
            let mut query = sqlx::query_as(sql);
            for value in binds {
                query = query.bind(value);
            }
            query.fetch_optional(pool).await
        }
    }
}
