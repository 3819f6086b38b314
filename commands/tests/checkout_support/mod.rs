//! The checkout process's test world: a mandate with a reservation, a cart, an `api`
//! order, and in-test ports (card issuer, merchant) that honour idempotency keys as the
//! real ones must.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shopagent_commands::checkout::{CheckoutProcess, MerchantBreaker, payment_of};
use shopagent_commands::{CommandBus, Store, SubscriberRunner};
use shopagent_domain::EventMetadata;
use shopagent_domain::address::{Address, AddressFields};
use shopagent_domain::cart::{Cart, CartCommand, CartLine};
use shopagent_domain::ids::*;
use shopagent_domain::mandate::{Mandate, MandateCommand, MandateTerms, Mode};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::{CheckoutPath, Order, OrderCommand, OrderDraft, OrderLine};
use shopagent_domain::payment::{CardReference, Payment};
use shopagent_domain::ports::{
    CallError, CardIssuer, CardRequest, IssuedCard, MerchantDirectory, MerchantGateway, PlaceError,
    PlaceOrder,
};
use time::OffsetDateTime;
use tokio::sync::Notify;

pub const TENANT: &str = "acme";

pub fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

pub fn stream(id: impl std::fmt::Display) -> String {
    format!("{TENANT}/{id}")
}

pub fn metadata() -> EventMetadata {
    EventMetadata::new(TENANT, "test")
}

#[derive(Default)]
pub struct Issuer {
    pub created: Mutex<Vec<String>>,
    pub voided: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl CardIssuer for Issuer {
    async fn create_card(&self, request: &CardRequest) -> Result<IssuedCard, CallError> {
        self.created
            .lock()
            .expect("lock")
            .push(request.idempotency_key.clone());
        // Derived from the key (same key, same card), in letters only: a reference is
        // never allowed to look like a card number.
        let letters: String = request
            .idempotency_key
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| match c.to_digit(10) {
                Some(digit) => char::from(b'g' + digit as u8),
                None => c,
            })
            .take(24)
            .collect();
        let reference = format!("ic_{letters}");
        Ok(IssuedCard {
            reference: CardReference::parse(&reference).expect("reference"),
            display: None,
            expires_at: OffsetDateTime::now_utc() + time::Duration::days(1),
        })
    }

    async fn void_card(&self, card: &CardReference, _key: &str) -> Result<(), CallError> {
        self.voided
            .lock()
            .expect("lock")
            .push(card.as_str().to_owned());
        Ok(())
    }
}

/// A merchant that answers per key: the same key always gets the same answer.
pub struct Merchant {
    pub calls: Mutex<Vec<String>>,
    pub answer: Result<String, PlaceError>,
    pub unavailable_first: AtomicUsize,
    pub hang_first_call: Mutex<bool>,
    pub hanging: Notify,
}

impl Merchant {
    pub fn answering(answer: Result<String, PlaceError>) -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            answer,
            unavailable_first: AtomicUsize::new(0),
            hang_first_call: Mutex::new(false),
            hanging: Notify::new(),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl MerchantGateway for Merchant {
    async fn place_order(&self, order: &PlaceOrder) -> Result<String, PlaceError> {
        self.calls
            .lock()
            .expect("lock")
            .push(order.idempotency_key.clone());
        assert!(order.ship_to.is_some(), "orders ship to the cart's address");
        if self.unavailable_first.load(Ordering::SeqCst) > 0 {
            self.unavailable_first.fetch_sub(1, Ordering::SeqCst);
            return Err(PlaceError::Unavailable("503".into()));
        }
        let hang = std::mem::take(&mut *self.hang_first_call.lock().expect("lock"));
        if hang {
            // The merchant placed the order; we die before recording it.
            self.hanging.notify_one();
            std::future::pending::<()>().await;
        }
        self.answer.clone()
    }
}

pub struct Directory(pub Option<Arc<Merchant>>);

#[async_trait::async_trait]
impl MerchantDirectory for Directory {
    async fn gateway(
        &self,
        _tenant: &str,
        merchant: &MerchantId,
    ) -> Option<Arc<dyn MerchantGateway>> {
        self.0
            .clone()
            .filter(|_| merchant.as_str() == "acme")
            .map(|m| m as Arc<dyn MerchantGateway>)
    }
}

pub struct Fixture {
    pub registry: Arc<CommandBus<shopagent_domain::merchant::Merchant>>,
    pub orders: Arc<CommandBus<Order>>,
    pub payments: Arc<CommandBus<Payment>>,
    pub mandates: Arc<CommandBus<Mandate>>,
    pub carts: Arc<CommandBus<Cart>>,
    pub mandate: MandateId,
    pub order: OrderId,
}

/// A mandate holding a 1200 reservation, a cart with an address, and an `api` order.
pub async fn fixture(store: &Store) -> Fixture {
    let fixture = Fixture {
        registry: Arc::new(CommandBus::new(store.clone())),
        orders: Arc::new(CommandBus::new(store.clone())),
        payments: Arc::new(CommandBus::new(store.clone())),
        mandates: Arc::new(CommandBus::new(store.clone())),
        carts: Arc::new(CommandBus::new(store.clone())),
        mandate: MandateId::new(),
        order: OrderId::new(),
    };
    let now = OffsetDateTime::now_utc();
    let profile = shopagent_domain::merchant::MerchantProfile {
        name: "Acme".into(),
        protocol: Some(shopagent_domain::merchant::Protocol::Ucp),
        api_endpoint: Some("https://acme.example/ucp".into()),
        deeplink_base: None,
        headless_domain: None,
        paths: [CheckoutPath::Api].into(),
        card_acceptor_ids: BTreeSet::new(),
    };
    let register = shopagent_domain::merchant::MerchantCommand::Register {
        merchant: MerchantId::parse("acme").expect("merchant"),
        profile,
        at: now,
    };
    fixture
        .registry
        .execute(&stream("merchant/acme"), register, metadata())
        .await
        .expect("register");
    let terms = MandateTerms {
        mode: Mode::Autopilot,
        currency: Currency::parse("USD").expect("USD"),
        period_budget: None,
        per_order_limit: None,
        allowed_merchants: BTreeSet::new(),
        blocked_merchants: BTreeSet::new(),
        blocked_categories: BTreeSet::new(),
        approval_threshold: None,
        price_drift_tolerance_bps: 0,
        expires_at: None,
    };
    let reservation = ReservationId::new();
    let acme = MerchantId::parse("acme").expect("merchant");
    fixture
        .mandates
        .execute(
            &stream(fixture.mandate),
            MandateCommand::Create {
                mandate_id: fixture.mandate,
                shopper: "alice".into(),
                terms,
                at: now,
            },
            metadata(),
        )
        .await
        .expect("mandate");
    let reserve = MandateCommand::Reserve {
        reservation_id: reservation,
        merchant: acme.clone(),
        categories: BTreeSet::new(),
        amount: usd(1_200),
        approval_required: false,
        at: now,
    };
    fixture
        .mandates
        .execute(&stream(fixture.mandate), reserve, metadata())
        .await
        .expect("reserve");
    let cart = CartId::new();
    fixture
        .carts
        .execute(
            &stream(cart),
            CartCommand::Create {
                cart_id: cart,
                shopper: "alice".into(),
                mandate_id: Some(fixture.mandate),
                currency: Currency::parse("USD").expect("USD"),
                at: now,
            },
            metadata(),
        )
        .await
        .expect("cart");
    let line = CartLine {
        offer_id: OfferId::parse("sku:1").expect("offer"),
        merchant: acme.clone(),
        title: "Tent".into(),
        category: Category::parse("outdoor").expect("c"),
        unit_price: usd(1_000),
        quantity: 1,
        price_seen_at: now,
    };
    fixture
        .carts
        .execute(
            &stream(cart),
            CartCommand::AddLine {
                line_id: LineId::new(),
                line,
            },
            metadata(),
        )
        .await
        .expect("line");
    let address = Address::new(AddressFields {
        name: "Ada".into(),
        line1: "1 Main St".into(),
        line2: None,
        city: "Springfield".into(),
        region: None,
        postal_code: "62701".into(),
        country: "US".into(),
    })
    .expect("address");
    fixture
        .carts
        .execute(
            &stream(cart),
            CartCommand::SetShippingAddress { address },
            metadata(),
        )
        .await
        .expect("address");
    let draft = OrderDraft {
        cart_id: cart,
        shopper: "alice".into(),
        mandate_id: Some(fixture.mandate),
        reservation_id: Some(reservation),
        merchant: acme,
        lines: vec![OrderLine {
            offer_id: OfferId::parse("sku:1").expect("offer"),
            title: "Tent".into(),
            quantity: 1,
            unit_price: usd(1_000),
        }],
        total: usd(1_200),
        path: CheckoutPath::Api,
        path_reason: "acme has a UCP API and is healthy".into(),
    };
    fixture
        .orders
        .execute(
            &stream(fixture.order),
            OrderCommand::Create {
                order_id: fixture.order,
                draft,
                at: now,
            },
            metadata(),
        )
        .await
        .expect("order");
    fixture
}

pub fn process(
    fixture: &Fixture,
    issuer: Arc<Issuer>,
    merchant: Option<Arc<Merchant>>,
) -> Arc<CheckoutProcess> {
    Arc::new(CheckoutProcess {
        orders: fixture.orders.clone(),
        payments: fixture.payments.clone(),
        mandates: fixture.mandates.clone(),
        carts: fixture.carts.clone(),
        issuer,
        merchants: Arc::new(Directory(merchant)),
        cap_tolerance_bps: 500,
        breaker: MerchantBreaker::new(fixture.registry.clone(), 2, 4),
        placed: Arc::default(),
    })
}

/// Steps until every committed event has been handled; failed steps are retried (as the
/// runner's backoff would). On PostgreSQL an event becomes readable only once older
/// transactions in the cluster end, so "nothing to read" is not yet "done".
pub async fn drain(store: &Store, runner: &SubscriberRunner) {
    for _ in 0..2_000 {
        let progress = runner.step().await.expect("step");
        if progress.handled == 0 && !progress.failed {
            if behind(store).await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    panic!("the process did not settle: {:?}", runner.last_error());
}

/// Committed events the process has not handled yet.
pub async fn behind(store: &Store) -> i64 {
    const SQL: &str =
        "SELECT txid, position FROM projection_checkpoints WHERE name = 'checkout_process'";
    let row: Option<(i64, i64)> = match store.database() {
        shopagent_commands::Database::Postgres(pool) => {
            sqlx::query_as(SQL).fetch_optional(pool).await
        }
        shopagent_commands::Database::Sqlite(pool) => {
            sqlx::query_as(SQL).fetch_optional(pool).await
        }
    }
    .expect("checkpoint");
    let (txid, position) = row.unwrap_or_default();
    store
        .count_after(shopagent_commands::LogCursor { txid, position })
        .await
        .expect("count")
}

pub async fn order(fixture: &Fixture) -> Order {
    fixture
        .orders
        .load(&stream(fixture.order))
        .await
        .expect("order")
        .0
}

pub async fn payment(fixture: &Fixture) -> Payment {
    fixture
        .payments
        .load(&stream(payment_of(fixture.order)))
        .await
        .expect("payment")
        .0
}

pub async fn mandate(fixture: &Fixture) -> Mandate {
    fixture
        .mandates
        .load(&stream(fixture.mandate))
        .await
        .expect("mandate")
        .0
}

pub async fn health(fixture: &Fixture) -> shopagent_domain::merchant::Health {
    fixture
        .registry
        .load(&stream("merchant/acme"))
        .await
        .expect("registry")
        .0
        .health
}

impl Fixture {
    /// The same world seen through another store (a restarted process).
    pub fn on(self, store: &Store) -> Fixture {
        Fixture {
            registry: Arc::new(CommandBus::new(store.clone())),
            orders: Arc::new(CommandBus::new(store.clone())),
            payments: Arc::new(CommandBus::new(store.clone())),
            mandates: Arc::new(CommandBus::new(store.clone())),
            carts: Arc::new(CommandBus::new(store.clone())),
            ..self
        }
    }
}

/// Runs a fresh instance of the process (nothing in memory) until it settles.
pub async fn settle(
    store: &Store,
    fixture: &Fixture,
    issuer: &Arc<Issuer>,
    merchant: Option<&Arc<Merchant>>,
) {
    let process = process(fixture, issuer.clone(), merchant.cloned());
    drain(store, &SubscriberRunner::new(store.clone(), process)).await;
}
