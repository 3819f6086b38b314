//! Order rules, one test each.

use shopagent_domain::ids::{CartId, MerchantId, OfferId, OrderId, RefundId, ReturnId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::{
    CheckoutPath, FailureReason, Order, OrderCommand as C, OrderDraft, OrderError, OrderEvent as E,
    OrderLine, OrderStatus, ReturnStatus,
};
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC);

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

fn draft() -> OrderDraft {
    OrderDraft {
        cart_id: CartId(uuid::Uuid::nil()),
        shopper: "shopper-1".into(),
        mandate_id: None,
        reservation_id: None,
        merchant: MerchantId::parse("acme").expect("merchant"),
        lines: vec![OrderLine {
            offer_id: OfferId::parse("sku:1").expect("offer"),
            title: "Tent".into(),
            quantity: 2,
            unit_price: usd(5_000),
        }],
        total: usd(11_300),
        path: CheckoutPath::Api,
        path_reason: "merchant speaks UCP and is healthy".into(),
    }
}

fn created() -> E {
    E::OrderCreated {
        order_id: OrderId(uuid::Uuid::nil()),
        draft: draft(),
        created_at: NOW,
    }
}

fn placed() -> Vec<E> {
    vec![
        created(),
        E::OrderSubmitted { at: NOW },
        E::OrderPlaced {
            merchant_reference: "A-1001".into(),
            at: NOW,
        },
    ]
}

fn delivered() -> Vec<E> {
    let mut events = placed();
    events.push(E::OrderShipped {
        carrier: "ups".into(),
        tracking_number: "1Z999".into(),
        at: NOW,
    });
    events.push(E::OrderDelivered { at: NOW });
    events
}

fn ret(n: u128) -> ReturnId {
    ReturnId(uuid::Uuid::from_u128(n))
}

fn refund_id(n: u128) -> RefundId {
    RefundId(uuid::Uuid::from_u128(n))
}

#[test]
fn an_order_records_its_checkout_path_and_why() {
    AggregateTest::<Order>::given_no_previous_events()
        .when(C::Create {
            order_id: OrderId(uuid::Uuid::nil()),
            draft: draft(),
            at: NOW,
        })
        .then_expect_events(vec![created()]);
}

#[test]
fn an_order_total_covers_its_lines() {
    let mut short = draft();
    short.total = usd(9_999);
    AggregateTest::<Order>::given_no_previous_events()
        .when(C::Create {
            order_id: OrderId::new(),
            draft: short,
            at: NOW,
        })
        .then_expect_error(OrderError::Invalid(
            "the total is less than its lines".into(),
        ));
}

#[test]
fn a_submitted_order_is_placed_with_the_merchant_reference() {
    AggregateTest::<Order>::given([created(), E::OrderSubmitted { at: NOW }])
        .when(C::MarkPlaced {
            merchant_reference: "A-1001".into(),
            at: NOW,
        })
        .then_expect_events(vec![E::OrderPlaced {
            merchant_reference: "A-1001".into(),
            at: NOW,
        }]);
}

#[test]
fn a_failure_carries_a_typed_reason() {
    AggregateTest::<Order>::given([created(), E::OrderSubmitted { at: NOW }])
        .when(C::MarkFailed {
            reason: FailureReason::PaymentDeclined,
            detail: "card declined".into(),
            at: NOW,
        })
        .then_expect_events(vec![E::OrderFailed {
            reason: FailureReason::PaymentDeclined,
            detail: "card declined".into(),
            at: NOW,
        }]);
}

#[test]
fn a_placed_order_cannot_fail() {
    AggregateTest::<Order>::given(placed())
        .when(C::MarkFailed {
            reason: FailureReason::InventoryChanged,
            detail: "x".into(),
            at: NOW,
        })
        .then_expect_error(OrderError::IllegalTransition {
            from: OrderStatus::Placed,
            action: "fail",
        });
}

#[test]
fn an_order_ships_only_once_placed() {
    AggregateTest::<Order>::given([created()])
        .when(C::Ship {
            carrier: "ups".into(),
            tracking_number: "1Z".into(),
            at: NOW,
        })
        .then_expect_error(OrderError::IllegalTransition {
            from: OrderStatus::Created,
            action: "ship",
        });
}

#[test]
fn shipping_records_carrier_and_tracking_number() {
    AggregateTest::<Order>::given(placed())
        .when(C::Ship {
            carrier: "ups".into(),
            tracking_number: "1Z999".into(),
            at: NOW,
        })
        .then_expect_events(vec![E::OrderShipped {
            carrier: "ups".into(),
            tracking_number: "1Z999".into(),
            at: NOW,
        }]);
}

#[test]
fn a_delivery_exception_can_still_end_in_delivery() {
    let mut events = placed();
    events.push(E::OrderShipped {
        carrier: "ups".into(),
        tracking_number: "1Z".into(),
        at: NOW,
    });
    events.push(E::DeliveryExceptionReported {
        detail: "nobody home".into(),
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::MarkDelivered { at: NOW })
        .then_expect_events(vec![E::OrderDelivered { at: NOW }]);
}

#[test]
fn a_shipped_order_cannot_be_cancelled() {
    let mut events = placed();
    events.push(E::OrderShipped {
        carrier: "ups".into(),
        tracking_number: "1Z".into(),
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::Cancel {
            reason: "changed my mind".into(),
            at: NOW,
        })
        .then_expect_error(OrderError::IllegalTransition {
            from: OrderStatus::Shipped,
            action: "cancel",
        });
}

#[test]
fn a_failed_order_cannot_be_cancelled() {
    AggregateTest::<Order>::given([
        created(),
        E::OrderFailed {
            reason: FailureReason::MerchantUnavailable,
            detail: "503".into(),
            at: NOW,
        },
    ])
    .when(C::Cancel {
        reason: "x".into(),
        at: NOW,
    })
    .then_expect_error(OrderError::IllegalTransition {
        from: OrderStatus::Failed,
        action: "cancel",
    });
}

#[test]
fn only_a_delivered_order_can_be_returned() {
    AggregateTest::<Order>::given(placed())
        .when(C::RequestReturn {
            return_id: ret(1),
            reason: "too small".into(),
            at: NOW,
        })
        .then_expect_error(OrderError::IllegalTransition {
            from: OrderStatus::Placed,
            action: "return",
        });
}

#[test]
fn a_return_goes_requested_then_rma_then_returned() {
    let mut events = delivered();
    events.push(E::ReturnRequested {
        return_id: ret(1),
        reason: "too small".into(),
        at: NOW,
    });
    AggregateTest::<Order>::given(events.clone())
        .when(C::MarkReturned {
            return_id: ret(1),
            at: NOW,
        })
        .then_expect_error(OrderError::ReturnOutOfOrder {
            return_id: ret(1),
            status: ReturnStatus::Requested,
            expected: ReturnStatus::RmaIssued,
        });
    events.push(E::RmaIssued {
        return_id: ret(1),
        rma: "RMA-7".into(),
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::MarkReturned {
            return_id: ret(1),
            at: NOW,
        })
        .then_expect_events(vec![E::ItemsReturned {
            return_id: ret(1),
            at: NOW,
        }]);
}

#[test]
fn a_return_refund_waits_for_the_items() {
    let mut events = delivered();
    events.push(E::ReturnRequested {
        return_id: ret(1),
        reason: "broken".into(),
        at: NOW,
    });
    events.push(E::RmaIssued {
        return_id: ret(1),
        rma: "RMA-7".into(),
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::Refund {
            refund_id: refund_id(1),
            return_id: Some(ret(1)),
            amount: usd(100),
            at: NOW,
        })
        .then_expect_error(OrderError::ReturnOutOfOrder {
            return_id: ret(1),
            status: ReturnStatus::RmaIssued,
            expected: ReturnStatus::Returned,
        });
}

#[test]
fn partial_refunds_add_up_to_a_full_refund() {
    let mut events = delivered();
    events.push(E::OrderRefunded {
        refund_id: refund_id(1),
        return_id: None,
        amount: usd(1_300),
        fully_refunded: false,
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::Refund {
            refund_id: refund_id(2),
            return_id: None,
            amount: usd(10_000),
            at: NOW,
        })
        .then_expect_events(vec![E::OrderRefunded {
            refund_id: refund_id(2),
            return_id: None,
            amount: usd(10_000),
            fully_refunded: true,
            at: NOW,
        }]);
}

#[test]
fn refunds_never_exceed_the_order_total() {
    let mut events = delivered();
    events.push(E::OrderRefunded {
        refund_id: refund_id(1),
        return_id: None,
        amount: usd(11_000),
        fully_refunded: false,
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::Refund {
            refund_id: refund_id(2),
            return_id: None,
            amount: usd(301),
            at: NOW,
        })
        .then_expect_error(OrderError::OverRefund {
            requested: usd(301),
            refundable: usd(300),
        });
}

#[test]
fn an_order_never_placed_cannot_be_refunded() {
    AggregateTest::<Order>::given([
        created(),
        E::OrderCancelled {
            reason: "r".into(),
            at: NOW,
        },
    ])
    .when(C::Refund {
        refund_id: refund_id(1),
        return_id: None,
        amount: usd(1),
        at: NOW,
    })
    .then_expect_error(OrderError::IllegalTransition {
        from: OrderStatus::Cancelled,
        action: "refund",
    });
}

#[test]
fn a_refund_is_recorded_once() {
    let mut events = delivered();
    events.push(E::OrderRefunded {
        refund_id: refund_id(1),
        return_id: None,
        amount: usd(10),
        fully_refunded: false,
        at: NOW,
    });
    AggregateTest::<Order>::given(events)
        .when(C::Refund {
            refund_id: refund_id(1),
            return_id: None,
            amount: usd(10),
            at: NOW,
        })
        .then_expect_error(OrderError::DuplicateRefund(refund_id(1)));
}

#[test]
fn commands_on_a_missing_order_are_refused() {
    AggregateTest::<Order>::given_no_previous_events()
        .when(C::Submit { at: NOW })
        .then_expect_error(OrderError::NotFound);
}

#[test]
fn an_unanswered_placement_is_counted_on_the_order() {
    AggregateTest::<Order>::given([
        created(),
        E::OrderSubmitted { at: NOW },
        E::PlacementAttemptFailed {
            attempt: 1,
            detail: "503".into(),
            at: NOW,
        },
    ])
    .when(C::RecordPlacementAttempt {
        detail: "timeout".into(),
        at: NOW,
    })
    .then_expect_events(vec![E::PlacementAttemptFailed {
        attempt: 2,
        detail: "timeout".into(),
        at: NOW,
    }]);
}

#[test]
fn only_a_submitted_order_counts_placement_attempts() {
    AggregateTest::<Order>::given([created()])
        .when(C::RecordPlacementAttempt {
            detail: "503".into(),
            at: NOW,
        })
        .then_expect_error(OrderError::IllegalTransition {
            from: OrderStatus::Created,
            action: "retry the placement of",
        });
}
