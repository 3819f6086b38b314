//! The reconciliation read model: one scenario per exception reason, matched orders
//! across partial refunds, daily totals, and paging through exceptions — on both
//! backends. Events are appended as the aggregates would record them, including ones
//! the aggregates' rules would never emit (money in another currency), because finance
//! must see whatever the log holds.

use std::sync::Arc;

use shopagent_commands::Store;
use shopagent_commands::test_support::TestStore;
use shopagent_domain::DomainEvent;
use shopagent_domain::ids::{
    AuthorizationId, CartId, MerchantId, OrderId, PaymentId, RefundId, ReservationId, ReturnId,
};
use shopagent_domain::mandate::MandateEvent;
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::{CheckoutPath, FailureReason, OrderDraft, OrderEvent};
use shopagent_domain::payment::{CardReference, PaymentEvent};
use shopagent_domain::reconciliation::ExceptionReason;
use shopagent_projections::reconciliation::{self, Judgement, OrderFilter, OrderLine};
use shopagent_projections::{OrdersHub, Projection, ProjectionRunner, Reconciliation};
use time::{Date, OffsetDateTime};

const TENANT: &str = "tenant-a";
const TOTAL: i64 = 10_000;

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").expect("EUR"))
}

/// Appends events to one stream, as its aggregate would.
struct Stream {
    store: Store,
    aggregate_type: &'static str,
    id: String,
    version: usize,
}

impl Stream {
    async fn record(&mut self, event: impl DomainEvent) -> &mut Self {
        self.version += 1;
        let metadata =
            serde_json::to_value(shopagent_domain::EventMetadata::new(TENANT, "test").to_map())
                .expect("metadata");
        let serialized = cqrs_es::persist::SerializedEvent {
            aggregate_id: self.id.clone(),
            sequence: self.version,
            aggregate_type: self.aggregate_type.to_owned(),
            event_type: event.event_type().to_owned(),
            event_version: event.event_version().to_owned(),
            payload: serde_json::to_value(&event).expect("payload"),
            metadata,
        };
        self.store
            .append(&[serialized], None)
            .await
            .expect("append");
        self
    }
}

/// One order and its payment, recorded step by step.
struct Purchase {
    order_id: OrderId,
    order: Stream,
    payment: Stream,
    reservation: ReservationId,
    authorization: AuthorizationId,
}

impl Purchase {
    fn new(store: &Store) -> Self {
        let order_id = OrderId::new();
        let payment_id = PaymentId::new();
        Self {
            order_id,
            order: Stream {
                store: store.clone(),
                aggregate_type: "order",
                id: format!("{TENANT}/{order_id}"),
                version: 0,
            },
            payment: Stream {
                store: store.clone(),
                aggregate_type: "payment",
                id: format!("{TENANT}/{payment_id}"),
                version: 0,
            },
            reservation: ReservationId::new(),
            authorization: AuthorizationId::new(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    async fn created(&mut self) -> &mut Self {
        let draft = OrderDraft {
            cart_id: CartId::new(),
            shopper: "shopper-1".to_owned(),
            mandate_id: None,
            reservation_id: Some(self.reservation),
            merchant: MerchantId::parse("outdoor-co").expect("merchant"),
            lines: vec![],
            total: usd(TOTAL),
            path: CheckoutPath::Api,
            path_reason: "test".to_owned(),
        };
        self.order
            .record(OrderEvent::OrderCreated {
                order_id: self.order_id,
                draft,
                created_at: Self::now(),
            })
            .await;
        self
    }

    async fn placed(&mut self) -> &mut Self {
        self.created().await;
        self.order
            .record(OrderEvent::OrderPlaced {
                merchant_reference: format!("ord-{}", self.order_id),
                at: Self::now(),
            })
            .await;
        self
    }

    async fn failed(&mut self) -> &mut Self {
        self.order
            .record(OrderEvent::OrderFailed {
                reason: FailureReason::PaymentRequired,
                detail: "test".to_owned(),
                at: Self::now(),
            })
            .await;
        self
    }

    /// A card for the order, authorized for the total.
    async fn authorized(&mut self, card: &str) -> &mut Self {
        let PaymentId(id) =
            PaymentId::parse(self.payment.id.rsplit('/').next().unwrap_or_default())
                .expect("payment id");
        self.payment
            .record(PaymentEvent::CardRequested {
                payment_id: PaymentId(id),
                order_id: self.order_id,
                shopper: "shopper-1".to_owned(),
                mandate_id: None,
                merchant: MerchantId::parse("outdoor-co").expect("merchant"),
                cap: usd(TOTAL),
                requested_at: Self::now(),
            })
            .await;
        self.payment
            .record(PaymentEvent::CardIssued {
                card: CardReference::parse(card).expect("card reference"),
                display: None,
                expires_at: Self::now(),
                issued_at: Self::now(),
            })
            .await;
        self.payment
            .record(PaymentEvent::AuthorizationApproved {
                authorization_id: self.authorization,
                amount: usd(TOTAL),
                at: Self::now(),
            })
            .await;
        self
    }

    async fn captured(&mut self, amount: Money) -> &mut Self {
        self.payment
            .record(PaymentEvent::PaymentCaptured {
                authorization_id: self.authorization,
                amount,
                at: Self::now(),
            })
            .await;
        self
    }

    async fn card_refunded(&mut self, minor: i64) -> &mut Self {
        self.payment
            .record(PaymentEvent::PaymentRefunded {
                refund_id: RefundId::new(),
                amount: usd(minor),
                at: Self::now(),
            })
            .await;
        self
    }

    async fn merchant_refunded(&mut self, minor: i64) -> &mut Self {
        self.order
            .record(OrderEvent::OrderRefunded {
                refund_id: RefundId::new(),
                return_id: None,
                amount: usd(minor),
                fully_refunded: false,
                at: Self::now(),
            })
            .await;
        self
    }

    async fn committed(&mut self, store: &Store, minor: i64) -> &mut Self {
        Stream {
            store: store.clone(),
            aggregate_type: "mandate",
            id: format!("{TENANT}/{}", uuid::Uuid::new_v4()),
            version: 0,
        }
        .record(MandateEvent::SpendCommitted {
            reservation_id: self.reservation,
            amount: usd(minor),
            period_start: Self::now().date(),
        })
        .await;
        self
    }

    /// A fully paid order: placed, authorized, captured in full, spend committed.
    async fn paid(&mut self, store: &Store) -> &mut Self {
        self.placed().await;
        self.authorized(&format!("ic_{}", letters())).await;
        self.captured(usd(TOTAL)).await;
        self.committed(store, TOTAL).await;
        self
    }
}

/// A card id without digit runs.
fn letters() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_digit() { 'x' } else { c })
        .collect()
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

fn judged_on(today: Date) -> Judgement {
    Judgement {
        today,
        capture_days: 7,
    }
}

/// Applies every event appended so far.
async fn catch_up(store: &Store) {
    ProjectionRunner::new(store.clone(), Arc::new(Reconciliation))
        .catch_up_to_head()
        .await
        .expect("catch up");
}

async fn line(store: &Store, judgement: Judgement, order_id: OrderId) -> OrderLine {
    reconciliation::orders(store.database(), &OrderFilter::default(), judgement, 1_000)
        .await
        .expect("orders")
        .into_iter()
        .find(|line| line.order_id == order_id.to_string())
        .expect("the order is in the read model")
}

async fn reason_of(store: &Store, order_id: OrderId) -> (&'static str, Option<String>) {
    let line = line(store, judged_on(today()), order_id).await;
    (line.status, line.reason)
}

fn exception(reason: ExceptionReason) -> (&'static str, Option<String>) {
    ("exception", Some(reason.as_str().to_owned()))
}

async fn each_reason_is_reported(test: &TestStore) {
    let store = test.store.clone();
    let s = &store;
    let mut matched = Purchase::new(s);
    matched.paid(s).await;
    let mut partial_refunds = Purchase::new(s);
    partial_refunds.paid(s).await;
    partial_refunds
        .merchant_refunded(1_000)
        .await
        .card_refunded(1_000)
        .await;
    partial_refunds
        .card_refunded(1_500)
        .await
        .merchant_refunded(1_500)
        .await;
    let mut short_capture = Purchase::new(s);
    short_capture
        .placed()
        .await
        .authorized(&format!("ic_{}", letters()))
        .await;
    short_capture.captured(usd(9_000)).await;
    let mut merchant_only = Purchase::new(s);
    merchant_only.paid(s).await.merchant_refunded(3_000).await;
    let mut card_only = Purchase::new(s);
    card_only.paid(s).await.card_refunded(3_000).await;
    let mut over_refund = Purchase::new(s);
    over_refund
        .placed()
        .await
        .authorized(&format!("ic_{}", letters()))
        .await;
    over_refund
        .captured(usd(5_000))
        .await
        .card_refunded(5_000)
        .await;
    over_refund.merchant_refunded(8_000).await;
    let mut never_placed = Purchase::new(s);
    never_placed.created().await;
    never_placed
        .authorized(&format!("ic_{}", letters()))
        .await
        .failed()
        .await;
    let mut no_order = Purchase::new(s);
    no_order.authorized(&format!("ic_{}", letters())).await;
    let mut foreign = Purchase::new(s);
    foreign
        .placed()
        .await
        .authorized(&format!("ic_{}", letters()))
        .await;
    foreign.captured(eur(TOTAL)).await;
    let mut awaiting_capture = Purchase::new(s);
    awaiting_capture
        .placed()
        .await
        .authorized(&format!("ic_{}", letters()))
        .await;
    let mut declined_then_failed = Purchase::new(s);
    declined_then_failed.created().await.failed().await;
    catch_up(s).await;

    assert_eq!(reason_of(s, matched.order_id).await, ("matched", None));
    assert_eq!(
        reason_of(s, partial_refunds.order_id).await,
        ("matched", None)
    );
    assert_eq!(
        reason_of(s, short_capture.order_id).await,
        exception(ExceptionReason::CaptureMismatch)
    );
    assert_eq!(
        reason_of(s, merchant_only.order_id).await,
        exception(ExceptionReason::MerchantRefundWithoutCardRefund)
    );
    assert_eq!(
        reason_of(s, card_only.order_id).await,
        exception(ExceptionReason::CardRefundWithoutMerchantRefund)
    );
    assert_eq!(
        reason_of(s, over_refund.order_id).await,
        exception(ExceptionReason::OverRefund)
    );
    assert_eq!(
        reason_of(s, never_placed.order_id).await,
        exception(ExceptionReason::AuthorizationWithoutOrder)
    );
    assert_eq!(
        reason_of(s, no_order.order_id).await,
        exception(ExceptionReason::AuthorizationWithoutOrder)
    );
    assert_eq!(
        reason_of(s, foreign.order_id).await,
        exception(ExceptionReason::CurrencyMismatch)
    );
    assert_eq!(
        reason_of(s, awaiting_capture.order_id).await,
        ("pending", None)
    );
    assert_eq!(
        reason_of(s, declined_then_failed.order_id).await,
        ("void", None)
    );

    // Eight days on, the uncaptured order is overdue.
    let later = judged_on(today() + time::Duration::days(8));
    let overdue = line(s, later, awaiting_capture.order_id).await;
    assert_eq!(
        (overdue.status, overdue.reason),
        exception(ExceptionReason::NotCaptured)
    );

    // The figures behind a match: authorized, captured, refunded, committed.
    let partial = line(s, judged_on(today()), partial_refunds.order_id).await;
    assert_eq!(
        (
            partial.authorized_minor,
            partial.captured_minor,
            partial.card_refunded_minor,
            partial.merchant_refunded_minor,
            partial.committed_minor,
        ),
        (TOTAL, TOTAL, 2_500, 2_500, TOTAL)
    );

    // The SQL filter agrees with the domain's judgement, reason by reason.
    let filter = OrderFilter {
        exceptions_only: true,
        ..OrderFilter::default()
    };
    let listed = reconciliation::orders(s.database(), &filter, judged_on(today()), 1_000)
        .await
        .expect("exceptions");
    assert_eq!(listed.len(), 7, "{listed:#?}");
    assert!(listed.iter().all(|line| line.status == "exception"));
    let overdue_listed = reconciliation::orders(
        s.database(),
        &OrderFilter {
            reason: Some(ExceptionReason::NotCaptured),
            ..OrderFilter::default()
        },
        later,
        1_000,
    )
    .await
    .expect("overdue");
    assert_eq!(overdue_listed.len(), 1);
    assert_eq!(
        overdue_listed[0].order_id,
        awaiting_capture.order_id.to_string()
    );

    // Pages of two walk every exception once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = reconciliation::orders(
            s.database(),
            &OrderFilter {
                after: after.clone(),
                ..filter.clone()
            },
            judged_on(today()),
            2,
        )
        .await
        .expect("page");
        if page.is_empty() {
            break;
        }
        after = page
            .last()
            .map(|l| (l.business_date.clone(), l.order_id.clone()));
        seen.extend(page.into_iter().map(|l| l.order_id));
    }
    let mut expected: Vec<String> = listed.into_iter().map(|l| l.order_id).collect();
    assert_eq!(seen, expected);
    expected.dedup();
    assert_eq!(seen.len(), expected.len());

    // Daily totals: USD orders placed today, captures and card refunds of today.
    let daily = reconciliation::daily(s.database(), Some(TENANT), today(), judged_on(today()))
        .await
        .expect("daily");
    let usd_totals = daily
        .iter()
        .find(|t| t.currency == "USD")
        .expect("USD totals");
    // Placed: matched, partial_refunds, short_capture, merchant_only, card_only,
    // over_refund, foreign, awaiting_capture.
    assert_eq!(usd_totals.orders, 8);
    let captured = 4 * TOTAL + 9_000 + 5_000;
    let refunded = 2_500 + 3_000 + 5_000;
    assert_eq!(usd_totals.captured_minor, captured);
    assert_eq!(usd_totals.refunded_minor, refunded);
    assert_eq!(usd_totals.merchant_refunded_minor, 2_500 + 3_000 + 8_000);
    assert_eq!(usd_totals.net_minor, captured - refunded);
    assert_eq!(usd_totals.exceptions, 7);
    // The EUR capture is its own line, never summed into USD.
    let eur_totals = daily.iter().find(|t| t.currency == "EUR").expect("EUR");
    assert_eq!(eur_totals.captured_minor, TOTAL);
    let other_tenant =
        reconciliation::daily(s.database(), Some("tenant-b"), today(), judged_on(today()))
            .await
            .expect("daily");
    assert!(other_tenant.is_empty());
}

async fn card_finds_its_payment(test: &TestStore) {
    let store = test.store.clone();
    let mut purchase = Purchase::new(&store);
    let card = format!("ic_{}", letters());
    purchase.placed().await.authorized(&card).await;
    catch_up(&store).await;
    let (tenant, payment_id) = reconciliation::find_payment_by_card(store.database(), &card)
        .await
        .expect("lookup")
        .expect("the card's payment");
    assert_eq!(tenant, TENANT);
    assert_eq!(format!("{TENANT}/{payment_id}"), purchase.payment.id);
    assert!(
        reconciliation::find_payment_by_card(store.database(), "ic_unknown")
            .await
            .expect("lookup")
            .is_none()
    );
}

async fn rebuilding_gives_the_same_model(test: &TestStore) {
    let store = test.store.clone();
    let mut purchase = Purchase::new(&store);
    purchase.paid(&store).await.merchant_refunded(3_000).await;
    catch_up(&store).await;
    let before = line(&store, judged_on(today()), purchase.order_id).await;
    ProjectionRunner::new(store.clone(), Arc::new(Reconciliation))
        .reset()
        .await
        .expect("reset");
    catch_up(&store).await;
    let after = line(&store, judged_on(today()), purchase.order_id).await;
    assert_eq!(before, after);
}

/// Every row of `table`, each as one line of its columns' text, in key order.
async fn dump(store: &Store, table: &str, columns: &[&str]) -> Vec<String> {
    let line: Vec<String> = columns
        .iter()
        .map(|column| format!("COALESCE(CAST({column} AS TEXT), '-')"))
        .collect();
    let sql = format!(
        "SELECT {} FROM {table} ORDER BY {}, {}",
        line.join(" || '|' || "),
        columns[0],
        columns[1]
    );
    match store.database() {
        shopagent_commands::Database::Postgres(pool) => {
            sqlx::query_scalar(&sql).fetch_all(pool).await
        }
        shopagent_commands::Database::Sqlite(pool) => {
            sqlx::query_scalar(&sql).fetch_all(pool).await
        }
    }
    .expect("dump")
}

/// The order hub's and reconciliation's rows and ledger, as they stand.
async fn read_models(store: &Store) -> Vec<Vec<String>> {
    vec![
        dump(store, "orders_hub", &OrdersHub::COLUMNS).await,
        dump(
            store,
            "reconciliation_orders",
            &Reconciliation::ORDER_COLUMNS,
        )
        .await,
        dump(
            store,
            "reconciliation_entries",
            &Reconciliation::ENTRY_COLUMNS,
        )
        .await,
    ]
}

/// Feeds both read models from the start of the log in batches of `size` events.
async fn project_in_batches_of(store: &Store, size: u32) {
    let projections: [Arc<dyn Projection>; 2] = [Arc::new(OrdersHub), Arc::new(Reconciliation)];
    for projection in projections {
        let runner = ProjectionRunner::new(store.clone(), projection).with_batch_size(size);
        runner.reset().await.expect("reset");
        runner.catch_up_to_head().await.expect("catch up");
    }
}

/// Writing a batch's rows at once, after applying its events in memory, leaves the
/// rows that applying and writing each event on its own leaves: several events of one
/// order in a batch, a payment before its order, events for rows never begun, money in
/// another currency, and the order's whole delivery and return.
async fn batched_and_event_by_event_models_agree(test: &TestStore) {
    let s = &test.store;
    for round in 0..3_i64 {
        Purchase::new(s)
            .paid(s)
            .await
            .merchant_refunded(1_000 + round)
            .await
            .card_refunded(500)
            .await;
        let mut payment_first = Purchase::new(s);
        payment_first.authorized(&format!("ic_{}", letters())).await;
        payment_first.placed().await.captured(eur(TOTAL)).await;
        Purchase::new(s).placed().await.failed().await;
        // Neither the card nor the reservation was ever seen begin.
        Purchase::new(s)
            .captured(usd(TOTAL))
            .await
            .committed(s, TOTAL)
            .await;
        let mut delivered = Purchase::new(s);
        delivered.paid(s).await;
        let at = OffsetDateTime::now_utc();
        for event in [
            OrderEvent::OrderConfirmed { at },
            OrderEvent::OrderShipped {
                carrier: "ups".to_owned(),
                tracking_number: format!("1Z{round}"),
                at,
            },
            OrderEvent::OrderDelivered { at },
            OrderEvent::ReturnRequested {
                return_id: ReturnId::new(),
                reason: "too small".to_owned(),
                at,
            },
        ] {
            delivered.order.record(event).await;
        }
        delivered.merchant_refunded(TOTAL).await;
    }
    project_in_batches_of(s, 1).await;
    let one_by_one = read_models(s).await;
    assert_eq!(one_by_one[0].len(), 12, "{:#?}", one_by_one[0]);
    assert_eq!(one_by_one[1].len(), 12, "{:#?}", one_by_one[1]);
    project_in_batches_of(s, 500).await;
    assert_eq!(read_models(s).await, one_by_one);
    project_in_batches_of(s, 7).await;
    assert_eq!(read_models(s).await, one_by_one);
}

shopagent_commands::on_both_backends!(
    each_reason_is_reported,
    card_finds_its_payment,
    rebuilding_gives_the_same_model,
    batched_and_event_by_event_models_agree
);
