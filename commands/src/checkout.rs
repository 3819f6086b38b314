//! The checkout process manager: drives each `api`-path order from the log.
//!
//! OrderCreated → request a card → card issued → submit and place with the merchant →
//! placed (commit the spend) or failed (void the card, release the reservation). A
//! cancellation before placement voids and releases too. Every step is a command with
//! an idempotency key derived from the event that caused it, and every outside call
//! carries a key derived from the aggregate it serves, so handling an event again after
//! a crash repeats nothing: no second order, no second card, no lost reservation.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use shopagent_domain::cart::{Cart, CartStatus};
use shopagent_domain::ids::{OrderId, PaymentId};
use shopagent_domain::mandate::{Mandate, MandateCommand, ReleaseReason};
use shopagent_domain::merchant::{Health, Merchant, MerchantCommand};
use shopagent_domain::order::{CheckoutPath, FailureReason, Order, OrderCommand, OrderEvent};
use shopagent_domain::payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
use shopagent_domain::{Aggregate, EventMetadata, IdempotencyKey};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::placed::PlacedOrders;
use crate::subscriber::{HandlerError, Subscriber, call_out, call_outcome};
use crate::trace;
use crate::{CommandBus, CommandError, Store, StoreError, StoredEvent};
use shopagent_domain::ports::{
    CallError, CardIssuer, CardRequest, MerchantDirectory, PlaceError, PlaceOrder,
};

/// The buses and ports the process works with.
pub struct CheckoutProcess {
    pub orders: Arc<CommandBus<Order>>,
    pub payments: Arc<CommandBus<Payment>>,
    pub mandates: Arc<CommandBus<Mandate>>,
    pub carts: Arc<CommandBus<Cart>>,
    pub issuer: Arc<dyn CardIssuer>,
    pub merchants: Arc<dyn MerchantDirectory>,
    /// How far above the order total the card's cap goes (taxes and shipping recomputed
    /// by the merchant), in basis points.
    pub cap_tolerance_bps: u32,
    /// Retries and the circuit breaker of merchant calls.
    pub breaker: MerchantBreaker,
    /// Each order placed, kept by the merchant's reference for its webhooks.
    pub placed: Arc<PlacedOrders>,
}

/// Bounded retries per order and a circuit breaker per merchant, feeding the registry.
///
/// A merchant that answers "unavailable" to `open_after` calls in a row is reported
/// `down` in the capability registry (new checkouts then avoid its API); its next
/// success reports it `healthy` again. Each unanswered placement is recorded on the
/// order (`PlacementAttemptFailed`, shown in its timeline); an order whose placement met
/// "unavailable" `give_up_after` times fails with `merchant_unavailable`, which voids
/// its card and releases its budget. The attempts are in the log, so a restart keeps
/// counting; the run of failures that opens a circuit is counted in memory, and a
/// restart starts that run again (the registry keeps the merchant `down` meanwhile).
#[derive(Debug)]
pub struct MerchantBreaker {
    pub registry: Arc<CommandBus<Merchant>>,
    pub open_after: u32,
    pub give_up_after: u32,
    merchant_failures: Mutex<HashMap<String, u32>>,
}

impl MerchantBreaker {
    pub fn new(registry: Arc<CommandBus<Merchant>>, open_after: u32, give_up_after: u32) -> Self {
        Self {
            registry,
            open_after: open_after.max(1),
            give_up_after: give_up_after.max(1),
            merchant_failures: Mutex::default(),
        }
    }

    /// Records an unavailable answer; returns whether the circuit just opened.
    fn failed(&self, merchant_stream: &str) -> bool {
        let mut merchants = self
            .merchant_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let failures = merchants.entry(merchant_stream.to_owned()).or_default();
        *failures += 1;
        let opened = *failures == self.open_after;
        if opened {
            Self::show(merchant_stream, true);
        }
        opened
    }

    /// Records an answer; returns whether the circuit had been open.
    fn answered(&self, merchant_stream: &str) -> bool {
        let failures = self
            .merchant_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(merchant_stream)
            .unwrap_or(0);
        let was_open = failures >= self.open_after;
        if was_open {
            Self::show(merchant_stream, false);
        }
        was_open
    }

    /// `shopagent_merchant_circuit_open{merchant}`: 1 while a merchant's circuit is open.
    fn show(merchant_stream: &str, open: bool) {
        metrics::gauge!("shopagent_merchant_circuit_open", "merchant" => merchant_stream.to_owned())
            .set(if open { 1.0 } else { 0.0 });
    }
}

impl std::fmt::Debug for CheckoutProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutProcess")
            .field("cap_tolerance_bps", &self.cap_tolerance_bps)
            .finish()
    }
}

/// The payment of an order: one per order, its id derived from the order's.
pub fn payment_of(order: OrderId) -> PaymentId {
    PaymentId(Uuid::new_v5(&order.0, b"payment"))
}

fn stream(tenant: &str, id: impl Display) -> String {
    format!("{tenant}/{id}")
}

/// A place where the crash tests can stop the process (`checkout/after/{point}`, with
/// the `failpoints` feature); nothing at all otherwise.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn crash_point(point: &str) {
    fail::fail_point!(&format!("checkout/after/{point}"));
}

/// The metadata of a step's command: caused by `cause`, keyed by the cause and the
/// step, so that a step run again after a crash replays.
fn step_metadata(cause: &StoredEvent, step: &str) -> EventMetadata {
    let mut metadata = EventMetadata::new(cause.metadata.tenant.clone(), "process:checkout")
        .caused_by(cause.event_id);
    metadata.correlation_id = cause.metadata.correlation_id;
    metadata.traceparent = cause.metadata.traceparent.clone();
    // The cause and the step identify the intent; the command itself carries a fresh
    // timestamp on every attempt, so it cannot be its own digest.
    let intent = format!("pm/{}/{step}", cause.event_id);
    metadata.idempotency_key = IdempotencyKey::parse(&intent).ok();
    metadata.request_digest = Some(intent);
    metadata
}

/// What a step's command came to: its result, once applied; `None` when the business
/// rules refused it, which is logged and ends the step (it will not change on retry);
/// anything else is an error the step is retried for.
fn settled<T, E: std::error::Error>(
    step: &str,
    target: &str,
    ran: Result<T, CommandError<E>>,
) -> Result<Option<T>, HandlerError> {
    match ran {
        Ok(done) => {
            crash_point(step);
            Ok(Some(done))
        }
        Err(CommandError::Rejected(rejection)) => {
            tracing::info!(step, target, %rejection, "checkout step not applicable");
            Ok(None)
        }
        Err(error) => Err(retry(error)),
    }
}

/// How long the purchases wait behind the log: the age of the oldest event the checkout
/// process has not handled, as last measured by [`PurchaseDelay::watch`] (zero before
/// the first measure, and while it is caught up). Every process of a deployment
/// measures it from the process's stored checkpoint, wherever the process runs.
///
/// Checkout reads it to refuse autopilot checkouts while the purchases already accepted
/// wait too long: the orders of a checkout accepted faster than the purchases behind it
/// complete would wait longer and longer, and the work waiting with them.
#[derive(Debug, Clone, Default)]
pub struct PurchaseDelay {
    millis: Arc<AtomicU64>,
}

impl PurchaseDelay {
    /// How often [`PurchaseDelay::watch`] measures.
    pub const MEASURED_EVERY: Duration = Duration::from_secs(1);

    /// The delay as last measured.
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }

    fn set(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.millis.store(millis, Ordering::Relaxed);
        metrics::gauge!("shopagent_purchase_delay_seconds").set(delay.as_secs_f64());
    }

    /// Measures the delay once: two reads of one row each (the checkpoint, and the
    /// first event after it), however far behind the process is.
    pub async fn measure(&self, store: &Store) -> Result<Duration, StoreError> {
        let cursor = crate::subscriber::checkpoint(store.database(), CheckoutProcess::NAME)
            .await
            .map_err(StoreError::from)?;
        let delay = store.waiting_for(cursor).await?;
        self.set(delay);
        Ok(delay)
    }

    /// Measures the delay every [`PurchaseDelay::MEASURED_EVERY`] until `stop`. A
    /// measure that fails keeps the last one (the store's trouble answers for itself).
    pub async fn watch(self, store: Store, stop: CancellationToken) {
        loop {
            if let Err(error) = self.measure(&store).await {
                tracing::debug!(%error, "the purchases' delay was not measured");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Self::MEASURED_EVERY) => {}
            }
        }
    }
}

fn retry(error: impl Display) -> HandlerError {
    HandlerError(error.to_string())
}

impl CheckoutProcess {
    pub const NAME: &'static str = "checkout_process";
    /// Orders handled at the same time. Each step holds a pooled connection only for
    /// its statements, and waits mostly on the issuer or the merchant.
    pub const CONCURRENT_ORDERS: usize = 16;
    /// Events read at a time ([`Subscriber::batch_size`]). The orders of a batch run
    /// side by side and the next batch waits for the batch's last, so behind the log a
    /// batch of 100 held only a score of orders: at 32 clients the process ended a 20-s
    /// level of the load bench 11,624 events behind with 500, against 19,953–22,156
    /// with 100.
    pub const BATCH_EVENTS: u32 = 500;

    /// Runs one step's command; true when it applied (or had applied before), false
    /// when it was not applicable (see [`settled`]).
    async fn step<A: Aggregate>(
        &self,
        bus: &CommandBus<A>,
        cause: &StoredEvent,
        target: &str,
        step: &str,
        command: A::Command,
    ) -> Result<bool, HandlerError> {
        let ran = bus.execute(target, command, step_metadata(cause, step));
        Ok(settled(step, target, ran.await)?.is_some())
    }

    /// Like [`step`](Self::step), and answers the aggregate's state after it: the
    /// state its command made (no read), or the stream as stored when the command
    /// appended nothing.
    async fn step_and_load<A: Aggregate>(
        &self,
        bus: &CommandBus<A>,
        cause: &StoredEvent,
        target: &str,
        step: &str,
        command: A::Command,
    ) -> Result<A, HandlerError> {
        let ran = bus.execute_and_load(target, command, step_metadata(cause, step), None);
        match settled(step, target, ran.await)? {
            Some((state, _)) => Ok(state),
            None => bus
                .load(target)
                .await
                .map(|(state, _)| state)
                .map_err(retry),
        }
    }

    async fn on_order_created(
        &self,
        event: &StoredEvent,
        order_id: OrderId,
    ) -> Result<(), HandlerError> {
        let tenant = &event.metadata.tenant;
        let (order, _) = self
            .orders
            .load_since(&event.aggregate_id, event.sequence)
            .await
            .map_err(retry)?;
        let Some(draft) = order.draft.filter(|d| d.path == CheckoutPath::Api) else {
            return Ok(()); // hand-offs are the shopper's; headless runs elsewhere
        };
        let cap = draft
            .total
            .checked_add(
                draft
                    .total
                    .checked_basis_points(self.cap_tolerance_bps)
                    .map_err(retry)?,
            )
            .map_err(retry)?;
        let payment_id = payment_of(order_id);
        let command = PaymentCommand::RequestCard {
            payment_id,
            order_id,
            shopper: draft.shopper,
            mandate_id: draft.mandate_id,
            merchant: draft.merchant,
            cap,
            at: OffsetDateTime::now_utc(),
        };
        let payment_stream = stream(tenant, payment_id);
        // The order's first payment: its id is made from the order's.
        self.payments.expect_new(&payment_stream);
        self.step(
            &self.payments,
            event,
            &payment_stream,
            "request-card",
            command,
        )
        .await
        .map(drop)
    }

    async fn on_card_requested(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let (payment, _) = self
            .payments
            .load_since(&event.aggregate_id, event.sequence)
            .await
            .map_err(retry)?;
        let (Some(payment_id), Some(terms)) = (payment.id, payment.terms) else {
            return Ok(());
        };
        if payment.card.is_some() || payment.status == PaymentStatus::Voided {
            return Ok(());
        }
        let request = CardRequest {
            idempotency_key: format!("card/{payment_id}"),
            order_id: terms.order_id,
            cap: terms.cap,
            merchant: terms.merchant,
            payment_ref: event.aggregate_id.clone(),
        };
        let created = call_out(
            "card_issuer",
            "create_card",
            self.issuer.create_card(&request),
            call_outcome,
        )
        .await;
        crash_point("issuer-create");
        match created {
            Ok(card) => {
                let command = PaymentCommand::RecordCardIssued {
                    card: card.reference,
                    display: card.display,
                    expires_at: card.expires_at,
                    at: OffsetDateTime::now_utc(),
                };
                self.step(
                    &self.payments,
                    event,
                    &event.aggregate_id,
                    "card-issued",
                    command,
                )
                .await
                .map(drop)
            }
            Err(CallError::Unavailable(why)) => {
                Err(HandlerError(format!("card issuer unavailable: {why}")))
            }
            Err(CallError::Refused(why)) => {
                let command = OrderCommand::MarkFailed {
                    reason: FailureReason::PaymentRequired,
                    detail: format!("no card: {why}"),
                    at: OffsetDateTime::now_utc(),
                };
                let order = stream(&event.metadata.tenant, terms.order_id);
                self.step(&self.orders, event, &order, "fail-no-card", command)
                    .await
                    .map(drop)
            }
        }
    }

    async fn on_card_issued(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let tenant = &event.metadata.tenant;
        let (payment, _) = self
            .payments
            .load_since(&event.aggregate_id, event.sequence)
            .await
            .map_err(retry)?;
        let card_display = payment.card_display.clone();
        let (Some(terms), Some((card, _))) = (payment.terms, payment.card) else {
            return Ok(());
        };
        let order_stream = stream(tenant, terms.order_id);
        let order = self
            .step_and_load(
                &self.orders,
                event,
                &order_stream,
                "submit",
                OrderCommand::Submit {
                    at: OffsetDateTime::now_utc(),
                },
            )
            .await?;
        let Some(draft) = order.draft else {
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        let Some(gateway) = self.merchants.gateway(tenant, &draft.merchant).await else {
            let command = OrderCommand::MarkFailed {
                reason: FailureReason::MerchantUnavailable,
                detail: format!("no connector for merchant {}", draft.merchant),
                at: now,
            };
            return self
                .step(
                    &self.orders,
                    event,
                    &order_stream,
                    "fail-no-connector",
                    command,
                )
                .await
                .map(drop);
        };
        // The address a cart ships to is fixed once checkout locked it.
        let (cart, _) = self
            .carts
            .load_settled(&stream(tenant, draft.cart_id), |cart| {
                cart.status == CartStatus::CheckingOut
            })
            .await
            .map_err(retry)?;
        let request = PlaceOrder {
            idempotency_key: format!("order/{}", terms.order_id),
            order_id: terms.order_id,
            lines: draft.lines,
            total: draft.total,
            ship_to: cart.address,
            card,
            card_display,
        };
        let registry_stream = stream(tenant, format!("merchant/{}", draft.merchant));
        // Until the order is kept below (or has failed): the merchant's first event
        // about it may come before its answer, and waits for it.
        let placing = self.placed.placing_at(tenant, draft.merchant.as_str());
        let placed = call_out(
            "merchant",
            "place_order",
            gateway.place_order(&request),
            |placed| match placed {
                Ok(_) => "ok",
                Err(PlaceError::Unavailable(_)) => "unavailable",
                Err(PlaceError::Failed { .. }) => "refused",
            },
        )
        .await;
        crash_point("merchant-place");
        if let Err(PlaceError::Unavailable(why)) = &placed {
            let attempts = order.placement_attempts + 1;
            let opened = self.breaker.failed(&registry_stream);
            if opened {
                let report = MerchantCommand::ReportHealth {
                    health: Health::Down,
                    reason: format!("circuit open: {why}"),
                    at: now,
                };
                self.step(
                    &self.breaker.registry,
                    event,
                    &registry_stream,
                    &format!("circuit-open/{attempts}"),
                    report,
                )
                .await?;
            }
            if attempts < self.breaker.give_up_after {
                let attempt = OrderCommand::RecordPlacementAttempt {
                    detail: format!("merchant unavailable: {why}"),
                    at: now,
                };
                self.step(
                    &self.orders,
                    event,
                    &order_stream,
                    &format!("attempt-{attempts}"),
                    attempt,
                )
                .await?;
                return Err(HandlerError(format!(
                    "merchant {} unavailable (attempt {attempts}): {why}",
                    draft.merchant
                )));
            }
        } else if self.breaker.answered(&registry_stream) {
            let report = MerchantCommand::ReportHealth {
                health: Health::Healthy,
                reason: "answered again".into(),
                at: now,
            };
            self.step(
                &self.breaker.registry,
                event,
                &registry_stream,
                "circuit-closed",
                report,
            )
            .await?;
        }
        let command = match placed {
            Ok(merchant_reference) => OrderCommand::MarkPlaced {
                merchant_reference,
                at: now,
            },
            Err(PlaceError::Failed { reason, detail }) => OrderCommand::MarkFailed {
                reason,
                detail,
                at: now,
            },
            Err(PlaceError::Unavailable(why)) => OrderCommand::MarkFailed {
                reason: FailureReason::MerchantUnavailable,
                detail: format!(
                    "gave up after {} attempts: {why}",
                    self.breaker.give_up_after
                ),
                at: now,
            },
        };
        let order = self
            .step_and_load(
                &self.orders,
                event,
                &order_stream,
                "placed-or-failed",
                command,
            )
            .await?;
        // As the order holds it: the merchant's first events about it come next.
        if let Some(reference) = &order.merchant_reference {
            self.placed.placed(
                tenant,
                draft.merchant.as_str(),
                reference,
                &terms.order_id.to_string(),
                draft.total.currency,
            );
        }
        drop(placing);
        Ok(())
    }

    async fn on_order_placed(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let (order, _) = self
            .orders
            .load_since(&event.aggregate_id, event.sequence)
            .await
            .map_err(retry)?;
        let Some(draft) = order.draft else {
            return Ok(());
        };
        let (Some(mandate_id), Some(reservation_id)) = (draft.mandate_id, draft.reservation_id)
        else {
            return Ok(());
        };
        let command = MandateCommand::CommitSpend {
            reservation_id,
            amount: draft.total,
        };
        self.step(
            &self.mandates,
            event,
            &stream(&event.metadata.tenant, mandate_id),
            "commit-spend",
            command,
        )
        .await
        .map(drop)
    }

    /// A failed or cancelled order gives everything back: card voided, budget released.
    async fn on_order_ended(
        &self,
        event: &StoredEvent,
        order_id: OrderId,
        reason: ReleaseReason,
    ) -> Result<(), HandlerError> {
        let tenant = &event.metadata.tenant;
        let (order, _) = self
            .orders
            .load_since(&event.aggregate_id, event.sequence)
            .await
            .map_err(retry)?;
        let Some(draft) = order.draft else {
            return Ok(());
        };
        if order.merchant_reference.is_some() {
            return Ok(()); // placed then cancelled: refunds, not voids, settle it
        }
        let payment_stream = stream(tenant, payment_of(order_id));
        let (payment, _) = self.payments.load(&payment_stream).await.map_err(retry)?;
        if payment.terms.is_some()
            && !matches!(
                payment.status,
                PaymentStatus::Voided | PaymentStatus::Captured
            )
        {
            if let Some((card, _)) = &payment.card {
                let voided = call_out(
                    "card_issuer",
                    "void_card",
                    self.issuer
                        .void_card(card, &format!("void/{}", payment_of(order_id))),
                    call_outcome,
                )
                .await;
                crash_point("issuer-void");
                match voided {
                    Ok(()) | Err(CallError::Refused(_)) => {}
                    Err(CallError::Unavailable(why)) => {
                        return Err(HandlerError(format!("card issuer unavailable: {why}")));
                    }
                }
            }
            let command = PaymentCommand::Void {
                reason: format!("order {}", order.status.as_str()),
                at: OffsetDateTime::now_utc(),
            };
            self.step(&self.payments, event, &payment_stream, "void", command)
                .await?;
        }
        if let (Some(mandate_id), Some(reservation_id)) = (draft.mandate_id, draft.reservation_id) {
            let command = MandateCommand::ReleaseReservation {
                reservation_id,
                reason,
            };
            self.step(
                &self.mandates,
                event,
                &stream(tenant, mandate_id),
                "release",
                command,
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Subscriber for CheckoutProcess {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn acts_on(&self, event: &StoredEvent) -> bool {
        Cause::KINDS.contains(&(event.aggregate_type.as_str(), event.event_type.as_str()))
    }

    /// Orders proceed independently: one waiting on its merchant holds up no other.
    fn concurrency(&self) -> usize {
        Self::CONCURRENT_ORDERS
    }

    fn batch_size(&self) -> u32 {
        Self::BATCH_EVENTS
    }

    /// An order's events and its payment's, in log order: the payment stream (its id
    /// derives from the order's, so both kinds of event name it).
    fn partition(&self, event: &StoredEvent) -> Option<String> {
        match event.aggregate_type.as_str() {
            "payment" => Some(event.aggregate_id.clone()),
            "order" => {
                let (tenant, id) = event.aggregate_id.rsplit_once('/')?;
                let order = OrderId::parse(id).ok()?;
                Some(stream(tenant, payment_of(order)))
            }
            _ => None,
        }
    }

    async fn handle(&self, event: &StoredEvent) -> Result<(), HandlerError> {
        let Some(cause) = Cause::of(event) else {
            return Ok(());
        };
        let step = async {
            match cause {
                Cause::OrderCreated(order_id) => self.on_order_created(event, order_id).await,
                Cause::OrderPlaced => self.on_order_placed(event).await,
                Cause::OrderEnded(reason) => self.order_ended(event, reason).await,
                Cause::CardRequested => self.on_card_requested(event).await,
                Cause::CardIssued => self.on_card_issued(event).await,
            }
        };
        step.instrument(trace::event_span(Self::NAME, cause.name(), event))
            .await
    }
}

/// The events the process acts on; it passes over every other.
#[derive(Debug, Clone, Copy)]
enum Cause {
    OrderCreated(OrderId),
    OrderPlaced,
    OrderEnded(ReleaseReason),
    CardRequested,
    CardIssued,
}

impl Cause {
    /// The (aggregate type, event type) of every event that is a cause: told apart by
    /// name, before any payload is read.
    const KINDS: [(&'static str, &'static str); 6] = [
        ("order", "OrderCreated"),
        ("order", "OrderPlaced"),
        ("order", "OrderFailed"),
        ("order", "OrderCancelled"),
        ("payment", "CardRequested"),
        ("payment", "CardIssued"),
    ];

    fn of(event: &StoredEvent) -> Option<Self> {
        let cause = match event.aggregate_type.as_str() {
            "order" => match OrderEvent::deserialize(&event.payload) {
                Ok(OrderEvent::OrderCreated { order_id, .. }) => Self::OrderCreated(order_id),
                Ok(OrderEvent::OrderPlaced { .. }) => Self::OrderPlaced,
                Ok(OrderEvent::OrderFailed { .. }) => {
                    Self::OrderEnded(ReleaseReason::CheckoutFailed)
                }
                Ok(OrderEvent::OrderCancelled { .. }) => {
                    Self::OrderEnded(ReleaseReason::CheckoutCancelled)
                }
                Ok(_) => return None,
                Err(error) => {
                    tracing::error!(position = event.position(), %error, "unreadable order event skipped");
                    return None;
                }
            },
            "payment" => match PaymentEvent::deserialize(&event.payload) {
                Ok(PaymentEvent::CardRequested { .. }) => Self::CardRequested,
                Ok(PaymentEvent::CardIssued { .. }) => Self::CardIssued,
                Ok(_) => return None,
                Err(error) => {
                    tracing::error!(position = event.position(), %error, "unreadable payment event skipped");
                    return None;
                }
            },
            _ => return None,
        };
        Some(cause)
    }

    /// The step's name in traces.
    fn name(self) -> &'static str {
        match self {
            Self::OrderCreated(_) => "request card",
            Self::OrderPlaced => "commit spend",
            Self::OrderEnded(_) => "release",
            Self::CardRequested => "issue card",
            Self::CardIssued => "place order",
        }
    }
}

impl CheckoutProcess {
    async fn order_ended(
        &self,
        event: &StoredEvent,
        reason: ReleaseReason,
    ) -> Result<(), HandlerError> {
        let (order, _) = self
            .orders
            .load_since(&event.aggregate_id, event.sequence)
            .await
            .map_err(retry)?;
        match order.id {
            Some(order_id) => self.on_order_ended(event, order_id, reason).await,
            None => Ok(()),
        }
    }
}
