//! Order: one per merchant sub-cart, from creation to delivery, returns and refunds.
//! Every transition not listed in [`Order::decide`] is rejected with
//! [`OrderError::IllegalTransition`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{
    CartId, MandateId, MerchantId, OfferId, OrderId, RefundId, ReservationId, ReturnId,
};
use crate::money::{Money, MoneyError};
use crate::{Aggregate, DomainEvent};

/// How the order is placed with the merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutPath {
    /// Through the merchant's API (a connector).
    Api,
    /// Handed to the shopper as a link to the merchant's own checkout.
    Deeplink,
    /// Allowlisted browser automation, the last resort.
    Headless,
}

/// Why an order could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    InventoryChanged,
    /// The merchant asked more than the order's total (the shopper agreed to that).
    PriceChanged,
    AddressInvalid,
    PaymentRequired,
    PaymentDeclined,
    MerchantUnavailable,
    PolicyBlocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    Created,
    Submitted,
    Placed,
    Confirmed,
    Shipped,
    OutForDelivery,
    Delivered,
    DeliveryException,
    Failed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Submitted => "submitted",
            Self::Placed => "placed",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::OutForDelivery => "out_for_delivery",
            Self::Delivered => "delivered",
            Self::DeliveryException => "delivery_exception",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub offer_id: OfferId,
    pub title: String,
    pub quantity: u32,
    pub unit_price: Money,
}

impl From<&crate::cart::CartLine> for OrderLine {
    fn from(line: &crate::cart::CartLine) -> Self {
        Self {
            offer_id: line.offer_id.clone(),
            title: line.title.clone(),
            quantity: line.quantity,
            unit_price: line.unit_price,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnStatus {
    Requested,
    RmaIssued,
    Returned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDraft {
    pub cart_id: CartId,
    pub shopper: String,
    pub mandate_id: Option<MandateId>,
    pub reservation_id: Option<ReservationId>,
    pub merchant: MerchantId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub path: CheckoutPath,
    /// Why this path was chosen, for the shopper and the auditor.
    pub path_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderCommand {
    Create {
        order_id: OrderId,
        draft: OrderDraft,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Submit {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MarkPlaced {
        merchant_reference: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MarkFailed {
        reason: FailureReason,
        detail: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The merchant could not be reached; placement will be tried again.
    RecordPlacementAttempt {
        detail: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Confirm {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Ship {
        carrier: String,
        tracking_number: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MarkOutForDelivery {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MarkDelivered {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ReportDeliveryException {
        detail: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Cancel {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RequestReturn {
        return_id: ReturnId,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    IssueRma {
        return_id: ReturnId,
        rma: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    MarkReturned {
        return_id: ReturnId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Refund {
        refund_id: RefundId,
        return_id: Option<ReturnId>,
        amount: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderCreated {
        order_id: OrderId,
        draft: OrderDraft,
        #[serde(with = "time::serde::rfc3339")]
        created_at: OffsetDateTime,
    },
    OrderSubmitted {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderPlaced {
        merchant_reference: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderFailed {
        reason: FailureReason,
        detail: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    PlacementAttemptFailed {
        /// 1 for the first failed attempt.
        attempt: u32,
        detail: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderConfirmed {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderShipped {
        carrier: String,
        tracking_number: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderOutForDelivery {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderDelivered {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    DeliveryExceptionReported {
        detail: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderCancelled {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ReturnRequested {
        return_id: ReturnId,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RmaIssued {
        return_id: ReturnId,
        rma: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ItemsReturned {
        return_id: ReturnId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    OrderRefunded {
        refund_id: RefundId,
        return_id: Option<ReturnId>,
        amount: Money,
        fully_refunded: bool,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::OrderCreated { .. } => "OrderCreated",
            Self::OrderSubmitted { .. } => "OrderSubmitted",
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::OrderFailed { .. } => "OrderFailed",
            Self::PlacementAttemptFailed { .. } => "PlacementAttemptFailed",
            Self::OrderConfirmed { .. } => "OrderConfirmed",
            Self::OrderShipped { .. } => "OrderShipped",
            Self::OrderOutForDelivery { .. } => "OrderOutForDelivery",
            Self::OrderDelivered { .. } => "OrderDelivered",
            Self::DeliveryExceptionReported { .. } => "DeliveryExceptionReported",
            Self::OrderCancelled { .. } => "OrderCancelled",
            Self::ReturnRequested { .. } => "ReturnRequested",
            Self::RmaIssued { .. } => "RmaIssued",
            Self::ItemsReturned { .. } => "ItemsReturned",
            Self::OrderRefunded { .. } => "OrderRefunded",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order does not exist")]
    NotFound,
    #[error("order already exists")]
    AlreadyExists,
    #[error("cannot {action} an order that is {}", .from.as_str())]
    IllegalTransition {
        from: OrderStatus,
        action: &'static str,
    },
    #[error("invalid order: {0}")]
    Invalid(String),
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("no return {0}")]
    UnknownReturn(ReturnId),
    #[error("return {0} already exists")]
    DuplicateReturn(ReturnId),
    #[error("return {return_id} is {}, not {}", status_name(*.status), status_name(*.expected))]
    ReturnOutOfOrder {
        return_id: ReturnId,
        status: ReturnStatus,
        expected: ReturnStatus,
    },
    #[error("refund {0} already recorded")]
    DuplicateRefund(RefundId),
    #[error("{requested} exceeds the {refundable} still refundable")]
    OverRefund { requested: Money, refundable: Money },
}

fn status_name(status: ReturnStatus) -> &'static str {
    match status {
        ReturnStatus::Requested => "requested",
        ReturnStatus::RmaIssued => "rma_issued",
        ReturnStatus::Returned => "returned",
    }
}

impl OrderError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "order_not_found",
            Self::AlreadyExists => "order_exists",
            Self::IllegalTransition { .. } => "illegal_order_transition",
            Self::Invalid(_) => "invalid_order",
            Self::Money(MoneyError::CurrencyMismatch(..)) => "currency_mismatch",
            Self::Money(_) => "amount_out_of_range",
            Self::UnknownReturn(_) => "unknown_return",
            Self::DuplicateReturn(_) => "duplicate_return",
            Self::ReturnOutOfOrder { .. } => "return_out_of_order",
            Self::DuplicateRefund(_) => "duplicate_refund",
            Self::OverRefund { .. } => "over_refund",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Option<OrderId>,
    pub draft: Option<OrderDraft>,
    pub status: OrderStatus,
    pub merchant_reference: Option<String>,
    pub failure: Option<FailureReason>,
    pub tracking: Option<(String, String)>,
    pub returns: BTreeMap<ReturnId, ReturnStatus>,
    pub refunds: BTreeMap<RefundId, Money>,
    pub refunded_minor: i64,
    /// Placement attempts the merchant did not answer (it was unavailable).
    #[serde(default)]
    pub placement_attempts: u32,
    /// The merchant's reference (RMA) of each return it accepted.
    #[serde(default)]
    pub rmas: BTreeMap<ReturnId, String>,
    /// Returns a refund has settled.
    #[serde(default)]
    pub refunded_returns: BTreeSet<ReturnId>,
}

fn text(field: &str, value: &str, max: usize) -> Result<(), OrderError> {
    crate::text::check(field, value, max).map_err(OrderError::Invalid)
}

impl Order {
    /// The return the merchant gave this RMA.
    pub fn return_with_rma(&self, rma: &str) -> Option<ReturnId> {
        self.rmas
            .iter()
            .find(|(_, known)| known.as_str() == rma)
            .map(|(id, _)| *id)
    }

    /// Returns whose goods are back and which no refund has settled yet.
    pub fn returns_awaiting_refund(&self) -> impl Iterator<Item = ReturnId> + '_ {
        self.returns
            .iter()
            .filter(|(id, status)| {
                **status == ReturnStatus::Returned && !self.refunded_returns.contains(id)
            })
            .map(|(id, _)| *id)
    }

    fn draft(&self) -> Result<&OrderDraft, OrderError> {
        self.draft.as_ref().ok_or(OrderError::NotFound)
    }

    /// The order exists and is in one of `allowed`; otherwise `action` is illegal.
    fn require(
        &self,
        allowed: &[OrderStatus],
        action: &'static str,
    ) -> Result<&OrderDraft, OrderError> {
        let draft = self.draft()?;
        if allowed.contains(&self.status) {
            Ok(draft)
        } else {
            Err(OrderError::IllegalTransition {
                from: self.status,
                action,
            })
        }
    }

    fn return_in(&self, return_id: ReturnId, expected: ReturnStatus) -> Result<(), OrderError> {
        let status = *self
            .returns
            .get(&return_id)
            .ok_or(OrderError::UnknownReturn(return_id))?;
        if status != expected {
            return Err(OrderError::ReturnOutOfOrder {
                return_id,
                status,
                expected,
            });
        }
        Ok(())
    }

    fn validate_draft(draft: &OrderDraft) -> Result<(), OrderError> {
        if draft.lines.is_empty() {
            return Err(OrderError::Invalid("an order has at least one line".into()));
        }
        let mut sum = Money::zero(draft.total.currency);
        for line in &draft.lines {
            if line.quantity == 0 || !line.unit_price.is_positive() {
                return Err(OrderError::Invalid(
                    "lines have a positive quantity and price".into(),
                ));
            }
            sum = sum.checked_add(line.unit_price.checked_mul(line.quantity)?)?;
        }
        if draft.total.try_cmp(sum)?.is_lt() {
            return Err(OrderError::Invalid(
                "the total is less than its lines".into(),
            ));
        }
        text("path_reason", &draft.path_reason, 500)
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderEvent as E;
        use OrderStatus as S;
        let event = match command {
            C::Create {
                order_id,
                draft,
                at,
            } => {
                if self.draft.is_some() {
                    return Err(OrderError::AlreadyExists);
                }
                Self::validate_draft(&draft)?;
                E::OrderCreated {
                    order_id,
                    draft,
                    created_at: at,
                }
            }
            C::Submit { at } => {
                self.require(&[S::Created], "submit")?;
                E::OrderSubmitted { at }
            }
            C::MarkPlaced {
                merchant_reference,
                at,
            } => {
                self.require(&[S::Created, S::Submitted], "place")?;
                text("merchant_reference", &merchant_reference, 200)?;
                E::OrderPlaced {
                    merchant_reference,
                    at,
                }
            }
            C::MarkFailed { reason, detail, at } => {
                self.require(&[S::Created, S::Submitted], "fail")?;
                text("detail", &detail, 1000)?;
                E::OrderFailed { reason, detail, at }
            }
            C::RecordPlacementAttempt { detail, at } => {
                self.require(&[S::Submitted], "retry the placement of")?;
                text("detail", &detail, 1000)?;
                E::PlacementAttemptFailed {
                    attempt: self.placement_attempts + 1,
                    detail,
                    at,
                }
            }
            C::Confirm { at } => {
                self.require(&[S::Placed], "confirm")?;
                E::OrderConfirmed { at }
            }
            C::Ship {
                carrier,
                tracking_number,
                at,
            } => {
                self.require(&[S::Placed, S::Confirmed], "ship")?;
                text("carrier", &carrier, 100)?;
                text("tracking_number", &tracking_number, 100)?;
                E::OrderShipped {
                    carrier,
                    tracking_number,
                    at,
                }
            }
            C::MarkOutForDelivery { at } => {
                self.require(&[S::Shipped, S::DeliveryException], "send out for delivery")?;
                E::OrderOutForDelivery { at }
            }
            C::MarkDelivered { at } => {
                self.require(
                    &[S::Shipped, S::OutForDelivery, S::DeliveryException],
                    "deliver",
                )?;
                E::OrderDelivered { at }
            }
            C::ReportDeliveryException { detail, at } => {
                self.require(
                    &[S::Shipped, S::OutForDelivery],
                    "report a delivery exception on",
                )?;
                text("detail", &detail, 1000)?;
                E::DeliveryExceptionReported { detail, at }
            }
            C::Cancel { reason, at } => {
                self.require(
                    &[S::Created, S::Submitted, S::Placed, S::Confirmed],
                    "cancel",
                )?;
                text("reason", &reason, 500)?;
                E::OrderCancelled { reason, at }
            }
            C::RequestReturn {
                return_id,
                reason,
                at,
            } => {
                self.require(&[S::Delivered], "return")?;
                if self.returns.contains_key(&return_id) {
                    return Err(OrderError::DuplicateReturn(return_id));
                }
                text("reason", &reason, 500)?;
                E::ReturnRequested {
                    return_id,
                    reason,
                    at,
                }
            }
            C::IssueRma { return_id, rma, at } => {
                self.require(&[S::Delivered], "issue an RMA for")?;
                self.return_in(return_id, ReturnStatus::Requested)?;
                text("rma", &rma, 100)?;
                E::RmaIssued { return_id, rma, at }
            }
            C::MarkReturned { return_id, at } => {
                self.require(&[S::Delivered], "receive a return of")?;
                self.return_in(return_id, ReturnStatus::RmaIssued)?;
                E::ItemsReturned { return_id, at }
            }
            C::Refund {
                refund_id,
                return_id,
                amount,
                at,
            } => {
                let draft = self.require(
                    &[
                        S::Placed,
                        S::Confirmed,
                        S::Shipped,
                        S::OutForDelivery,
                        S::Delivered,
                        S::DeliveryException,
                        S::Cancelled,
                    ],
                    "refund",
                )?;
                if self.merchant_reference.is_none() {
                    return Err(OrderError::IllegalTransition {
                        from: self.status,
                        action: "refund",
                    });
                }
                if self.refunds.contains_key(&refund_id) {
                    return Err(OrderError::DuplicateRefund(refund_id));
                }
                if let Some(return_id) = return_id {
                    self.return_in(return_id, ReturnStatus::Returned)?;
                }
                if !amount.is_positive() {
                    return Err(OrderError::Invalid("a refund is positive".into()));
                }
                let refundable = draft
                    .total
                    .checked_sub(Money::new(self.refunded_minor, draft.total.currency))?;
                if amount.try_cmp(refundable)?.is_gt() {
                    return Err(OrderError::OverRefund {
                        requested: amount,
                        refundable,
                    });
                }
                E::OrderRefunded {
                    refund_id,
                    return_id,
                    amount,
                    fully_refunded: amount == refundable,
                    at,
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: OrderEvent) {
        use OrderEvent as E;
        use OrderStatus as S;
        match event {
            E::OrderCreated {
                order_id, draft, ..
            } => {
                self.id = Some(order_id);
                self.draft = Some(draft);
                self.status = S::Created;
            }
            E::OrderSubmitted { .. } => self.status = S::Submitted,
            E::OrderPlaced {
                merchant_reference, ..
            } => {
                self.merchant_reference = Some(merchant_reference);
                self.status = S::Placed;
            }
            E::OrderFailed { reason, .. } => {
                self.failure = Some(reason);
                self.status = S::Failed;
            }
            E::PlacementAttemptFailed { attempt, .. } => self.placement_attempts = attempt,
            E::OrderConfirmed { .. } => self.status = S::Confirmed,
            E::OrderShipped {
                carrier,
                tracking_number,
                ..
            } => {
                self.tracking = Some((carrier, tracking_number));
                self.status = S::Shipped;
            }
            E::OrderOutForDelivery { .. } => self.status = S::OutForDelivery,
            E::OrderDelivered { .. } => self.status = S::Delivered,
            E::DeliveryExceptionReported { .. } => self.status = S::DeliveryException,
            E::OrderCancelled { .. } => self.status = S::Cancelled,
            E::ReturnRequested { return_id, .. } => {
                self.returns.insert(return_id, ReturnStatus::Requested);
            }
            E::RmaIssued { return_id, rma, .. } => {
                self.returns.insert(return_id, ReturnStatus::RmaIssued);
                self.rmas.insert(return_id, rma);
            }
            E::ItemsReturned { return_id, .. } => {
                self.returns.insert(return_id, ReturnStatus::Returned);
            }
            E::OrderRefunded {
                refund_id,
                return_id,
                amount,
                ..
            } => {
                self.refunds.insert(refund_id, amount);
                self.refunded_returns.extend(return_id);
                self.refunded_minor = self.refunded_minor.saturating_add(amount.minor);
            }
        }
    }
}
