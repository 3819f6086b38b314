//! `orders_hub`: per shopper, every order across merchants and paths, with its status,
//! totals, tracking and timeline — the orders list of the product.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};
use shopagent_commands::StoredEvent;
use shopagent_commands::log::format_timestamp;
use shopagent_domain::order::{CheckoutPath, OrderDraft, OrderEvent};

use crate::on_read_model;
use crate::rows::{Cell, OnConflict, ROWS_PER_STATEMENT, Wanted, stream_key, upsert};
use crate::runner::{Projection, ProjectionError, ReadModelTx};

#[derive(Debug, Default, Clone, Copy)]
pub struct OrdersHub;

impl OrdersHub {
    pub const NAME: &'static str = "orders_hub";

    /// Every column of `orders_hub`, in the order a batch writes them.
    pub const COLUMNS: [&'static str; 16] = [
        "tenant",
        "order_id",
        "shopper",
        "mandate_id",
        "merchant",
        "path",
        "status",
        "total_minor",
        "refunded_minor",
        "currency",
        "merchant_reference",
        "carrier",
        "tracking_number",
        "timeline",
        "created_at",
        "updated_at",
    ];
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

/// One row of `orders_hub`, as read and written by a batch.
#[derive(Debug, sqlx::FromRow)]
struct HubRow {
    tenant: String,
    order_id: String,
    shopper: String,
    mandate_id: Option<String>,
    merchant: String,
    path: String,
    status: String,
    total_minor: i64,
    refunded_minor: i64,
    currency: String,
    merchant_reference: Option<String>,
    carrier: Option<String>,
    tracking_number: Option<String>,
    timeline: String,
    created_at: String,
    updated_at: String,
}

/// A row while a batch changes it: its timeline is parsed once and written once.
struct Order {
    row: HubRow,
    timeline: Vec<Value>,
}

impl Order {
    fn read(row: HubRow) -> Self {
        let timeline = serde_json::from_str(&row.timeline).unwrap_or_default();
        Self { row, timeline }
    }

    fn created(tenant: &str, order_id: &str, draft: &OrderDraft, at: &str) -> Self {
        let path = path_name(draft.path);
        Self {
            timeline: vec![
                json!({"at": at, "event": "created", "path": path, "reason": draft.path_reason}),
            ],
            row: HubRow {
                tenant: tenant.to_owned(),
                order_id: order_id.to_owned(),
                shopper: draft.shopper.clone(),
                mandate_id: draft.mandate_id.map(|m| m.to_string()),
                merchant: draft.merchant.to_string(),
                path: path.to_owned(),
                status: "created".to_owned(),
                total_minor: draft.total.minor,
                refunded_minor: 0,
                currency: draft.total.currency.code().to_owned(),
                merchant_reference: None,
                carrier: None,
                tracking_number: None,
                timeline: String::new(),
                created_at: at.to_owned(),
                updated_at: at.to_owned(),
            },
        }
    }

    fn apply(&mut self, change: Change, at: &str) {
        let row = &mut self.row;
        if let Some(status) = change.status {
            status.clone_into(&mut row.status);
        }
        if let Some(reference) = change.reference {
            row.merchant_reference = Some(reference);
        }
        if let Some((carrier, tracking_number)) = change.tracking {
            row.carrier = Some(carrier);
            row.tracking_number = Some(tracking_number);
        }
        row.refunded_minor += change.refunded;
        at.clone_into(&mut row.updated_at);
        self.timeline.push(change.entry);
    }

    fn into_cells(self) -> Vec<Cell> {
        let row = self.row;
        vec![
            row.tenant.into(),
            row.order_id.into(),
            row.shopper.into(),
            row.mandate_id.into(),
            row.merchant.into(),
            row.path.into(),
            row.status.into(),
            row.total_minor.into(),
            row.refunded_minor.into(),
            row.currency.into(),
            row.merchant_reference.into(),
            row.carrier.into(),
            row.tracking_number.into(),
            Value::from(self.timeline).to_string().into(),
            row.created_at.into(),
            row.updated_at.into(),
        ]
    }
}

#[async_trait::async_trait]
impl Projection for OrdersHub {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orders_hub"]
    }

    /// An order's events, and only those.
    fn projects(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "order"
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Reads the rows of the orders a pass names in one statement, applies the pass's
    /// events to them in memory, in log order, and writes the changed rows back in one.
    /// An event for an order whose creation this model never saw changes nothing.
    async fn apply_batch(
        &self,
        tx: &mut ReadModelTx<'_>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        for pass in events.chunks(ROWS_PER_STATEMENT) {
            let mut decoded = Vec::new();
            let mut wanted = Wanted::default();
            for event in pass.iter().filter(|e| self.projects(e)) {
                let order = OrderEvent::deserialize(&event.payload)
                    .map_err(|error| ProjectionError::unreadable(event, &error))?;
                let order_id = match &order {
                    OrderEvent::OrderCreated { order_id, .. } => order_id.to_string(),
                    _ => stream_key(&event.aggregate_id).to_owned(),
                };
                wanted.add(&event.metadata.tenant, "order_id", order_id.as_str());
                decoded.push((event, order_id, order));
            }
            if decoded.is_empty() {
                continue;
            }
            let mut orders: BTreeMap<(String, String), Order> = wanted
                .fetch::<HubRow>(tx, "orders_hub", &Self::COLUMNS)
                .await?
                .into_iter()
                .map(|row| ((row.tenant.clone(), row.order_id.clone()), Order::read(row)))
                .collect();
            let mut changed = BTreeSet::new();
            for (event, order_id, order) in decoded {
                let key = (event.metadata.tenant.clone(), order_id);
                let at = format_timestamp(event.recorded_at);
                if let OrderEvent::OrderCreated { draft, .. } = &order {
                    // A row already there was made by an earlier OrderCreated: keep it.
                    if !orders.contains_key(&key) {
                        orders.insert(key.clone(), Order::created(&key.0, &key.1, draft, &at));
                        changed.insert(key);
                    }
                } else if let (Some(change), Some(row)) =
                    (change(&order, &at), orders.get_mut(&key))
                {
                    row.apply(change, &at);
                    changed.insert(key);
                }
            }
            let rows = changed
                .iter()
                .filter_map(|key| orders.remove(key))
                .map(Order::into_cells)
                .collect();
            upsert(
                tx,
                "orders_hub",
                &Self::COLUMNS,
                &Self::COLUMNS[..2],
                OnConflict::Overwrite(&Self::COLUMNS[2..]),
                rows,
            )
            .await?;
        }
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
///
/// Planned for its values on each call, like the batches' reads: a
/// generic plan kept from the hub's first minutes scanned every order of the tenant.
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
    shopagent_commands::on_pool!(db, pool => {
        let mut query = sqlx::query_as(sql).persistent(false);
        for value in binds {
            query = query.bind(value);
        }
        query.fetch_optional(pool).await
    })
}
