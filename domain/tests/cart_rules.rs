//! Cart rules, one test each.

use shopagent_domain::Aggregate;
use shopagent_domain::address::{Address, AddressFields};
use shopagent_domain::cart::{
    Cart, CartCommand as C, CartError, CartEvent as E, CartLine, Quote, SubCartDecision,
};
use shopagent_domain::ids::{CartId, Category, LineId, MerchantId, OfferId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::{date, datetime};

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC);
const LATER: OffsetDateTime = datetime!(2026-11-25 10:30 UTC);

fn usd_currency() -> Currency {
    Currency::parse("USD").expect("USD")
}

fn usd(minor: i64) -> Money {
    Money::new(minor, usd_currency())
}

fn merchant(name: &str) -> MerchantId {
    MerchantId::parse(name).expect("merchant")
}

fn lid(n: u128) -> LineId {
    LineId(uuid::Uuid::from_u128(n))
}

fn line(merchant_name: &str, unit: i64, quantity: u32) -> CartLine {
    CartLine {
        offer_id: OfferId::parse("sku:tent-2p").expect("offer"),
        merchant: merchant(merchant_name),
        title: "Two-person tent".into(),
        category: Category::parse("outdoor/tents").expect("category"),
        unit_price: usd(unit),
        quantity,
        price_seen_at: NOW,
    }
}

fn address() -> Address {
    Address::new(AddressFields {
        name: "Ada Shopper".into(),
        line1: "1 Main St".into(),
        line2: None,
        city: "Springfield".into(),
        region: Some("IL".into()),
        postal_code: "62701".into(),
        country: "US".into(),
    })
    .expect("address")
}

fn quote(items: i64) -> Quote {
    Quote {
        items_total: usd(items),
        shipping: usd(500),
        tax: usd(800),
        delivery_estimate: Some(date!(2026 - 11 - 28)),
        expires_at: LATER,
    }
}

fn created() -> E {
    E::CartCreated {
        cart_id: CartId(uuid::Uuid::nil()),
        shopper: "shopper-1".into(),
        mandate_id: None,
        currency: usd_currency(),
        created_at: NOW,
    }
}

fn with_line() -> Vec<E> {
    vec![
        created(),
        E::LineAdded {
            line_id: lid(1),
            line: line("acme", 10_000, 1),
        },
    ]
}

fn quoted(items: i64) -> Vec<E> {
    let mut events = with_line();
    events.push(E::ShippingAddressSet { address: address() });
    events.push(E::QuoteRecorded {
        merchant: merchant("acme"),
        quote: quote(items),
    });
    events
}

#[test]
fn a_line_is_added_to_an_open_cart() {
    AggregateTest::<Cart>::given([created()])
        .when(C::AddLine {
            line_id: lid(1),
            line: line("acme", 10_000, 2),
        })
        .then_expect_events(vec![E::LineAdded {
            line_id: lid(1),
            line: line("acme", 10_000, 2),
        }]);
}

#[test]
fn quantities_are_between_one_and_the_maximum() {
    for quantity in [0, 1000] {
        AggregateTest::<Cart>::given([created()])
            .when(C::AddLine {
                line_id: lid(1),
                line: line("acme", 100, quantity),
            })
            .then_expect_error(CartError::QuantityOutOfRange);
    }
    AggregateTest::<Cart>::given(with_line())
        .when(C::ChangeQuantity {
            line_id: lid(1),
            quantity: 0,
        })
        .then_expect_error(CartError::QuantityOutOfRange);
}

#[test]
fn unit_prices_are_positive() {
    AggregateTest::<Cart>::given([created()])
        .when(C::AddLine {
            line_id: lid(1),
            line: line("acme", 0, 1),
        })
        .then_expect_error(CartError::PriceNotPositive);
}

#[test]
fn every_line_is_in_the_cart_currency() {
    let mut euro = line("acme", 100, 1);
    euro.unit_price = Money::new(100, Currency::parse("EUR").expect("EUR"));
    let rejected = AggregateTest::<Cart>::given([created()]).when(C::AddLine {
        line_id: lid(1),
        line: euro,
    });
    rejected.then_expect_error(CartError::Money(
        shopagent_domain::money::MoneyError::CurrencyMismatch(
            usd_currency(),
            Currency::parse("EUR").expect("EUR"),
        ),
    ));
}

#[test]
fn a_line_total_that_overflows_is_refused() {
    AggregateTest::<Cart>::given([created()])
        .when(C::AddLine {
            line_id: lid(1),
            line: line("acme", i64::MAX / 2, 3),
        })
        .then_expect_error(CartError::Money(
            shopagent_domain::money::MoneyError::Overflow,
        ));
}

#[test]
fn a_line_id_is_used_once() {
    AggregateTest::<Cart>::given(with_line())
        .when(C::AddLine {
            line_id: lid(1),
            line: line("acme", 100, 1),
        })
        .then_expect_error(CartError::DuplicateLine(lid(1)));
}

#[test]
fn changing_a_merchant_s_lines_invalidates_its_quote() {
    AggregateTest::<Cart>::given(quoted(10_000))
        .when(C::ChangeQuantity {
            line_id: lid(1),
            quantity: 2,
        })
        .then_expect_events(vec![
            E::LineQuantityChanged {
                line_id: lid(1),
                quantity: 2,
            },
            E::QuoteInvalidated {
                merchant: merchant("acme"),
            },
        ]);
}

#[test]
fn changing_the_address_invalidates_every_quote() {
    let mut other = address().fields().clone();
    other.postal_code = "10001".into();
    AggregateTest::<Cart>::given(quoted(10_000))
        .when(C::SetShippingAddress {
            address: Address::new(other.clone()).expect("address"),
        })
        .then_expect_events(vec![
            E::ShippingAddressSet {
                address: Address::new(other).expect("address"),
            },
            E::QuoteInvalidated {
                merchant: merchant("acme"),
            },
        ]);
}

#[test]
fn removing_an_unknown_line_is_refused() {
    AggregateTest::<Cart>::given(with_line())
        .when(C::RemoveLine { line_id: lid(9) })
        .then_expect_error(CartError::UnknownLine(lid(9)));
}

#[test]
fn a_quote_needs_a_shipping_address() {
    AggregateTest::<Cart>::given(with_line())
        .when(C::RecordQuote {
            merchant: merchant("acme"),
            quote: quote(10_000),
            at: NOW,
        })
        .then_expect_error(CartError::AddressRequired);
}

#[test]
fn a_quote_is_for_a_merchant_in_the_cart() {
    let mut events = with_line();
    events.push(E::ShippingAddressSet { address: address() });
    AggregateTest::<Cart>::given(events)
        .when(C::RecordQuote {
            merchant: merchant("elsewhere"),
            quote: quote(10_000),
            at: NOW,
        })
        .then_expect_error(CartError::NoLinesForMerchant(merchant("elsewhere")));
}

#[test]
fn a_quote_that_already_expired_is_refused() {
    let mut events = with_line();
    events.push(E::ShippingAddressSet { address: address() });
    AggregateTest::<Cart>::given(events)
        .when(C::RecordQuote {
            merchant: merchant("acme"),
            quote: quote(10_000),
            at: LATER,
        })
        .then_expect_error(CartError::QuoteAlreadyExpired);
}

#[test]
fn checkout_needs_a_quote_from_every_merchant() {
    let mut events = quoted(10_000);
    events.push(E::LineAdded {
        line_id: lid(2),
        line: line("bolt-bikes", 5_000, 1),
    });
    AggregateTest::<Cart>::given(events)
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 300,
            at: NOW,
        })
        .then_expect_error(CartError::MissingQuote(merchant("bolt-bikes")));
}

#[test]
fn checkout_with_an_expired_quote_is_refused() {
    AggregateTest::<Cart>::given(quoted(10_000))
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 300,
            at: LATER,
        })
        .then_expect_error(CartError::QuoteExpired(merchant("acme")));
}

#[test]
fn an_empty_cart_cannot_check_out() {
    AggregateTest::<Cart>::given([created()])
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 300,
            at: NOW,
        })
        .then_expect_error(CartError::Empty);
}

#[test]
fn checkout_within_the_drift_tolerance_proceeds() {
    let events = AggregateTest::<Cart>::given(quoted(10_300))
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 300,
            at: NOW,
        })
        .events();
    let E::CheckoutStarted { sub_carts, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(sub_carts.len(), 1);
    assert_eq!(sub_carts[0].decision, SubCartDecision::Proceed);
    assert_eq!(sub_carts[0].seen_total, usd(10_000));
    assert_eq!(sub_carts[0].grand_total, usd(10_300 + 500 + 800));
}

#[test]
fn a_quote_beyond_the_drift_tolerance_waits_for_approval() {
    let events = AggregateTest::<Cart>::given(quoted(10_301))
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 300,
            at: NOW,
        })
        .events();
    let E::CheckoutStarted { sub_carts, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        sub_carts[0].decision,
        SubCartDecision::AwaitApproval { drift_bps: 301 }
    );
}

#[test]
fn checkout_splits_the_cart_by_merchant() {
    let mut events = quoted(10_000);
    events.push(E::LineAdded {
        line_id: lid(2),
        line: line("bolt-bikes", 5_000, 2),
    });
    events.push(E::QuoteRecorded {
        merchant: merchant("bolt-bikes"),
        quote: quote(10_000),
    });
    let events = AggregateTest::<Cart>::given(events)
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 0,
            at: NOW,
        })
        .events();
    let E::CheckoutStarted { sub_carts, .. } = &events[0] else {
        panic!("{events:?}")
    };
    let merchants: Vec<&str> = sub_carts.iter().map(|s| s.merchant.as_str()).collect();
    assert_eq!(merchants, ["acme", "bolt-bikes"]);
    assert_eq!(sub_carts[1].lines, vec![lid(2)]);
}

#[test]
fn a_cart_in_checkout_keeps_how_it_was_split() {
    let mut events = quoted(10_000);
    let decided = AggregateTest::<Cart>::given(events.clone())
        .when(C::StartCheckout {
            price_drift_tolerance_bps: 0,
            at: NOW,
        })
        .events();
    let E::CheckoutStarted { sub_carts, .. } = &decided[0] else {
        panic!("{decided:?}")
    };
    let sub_carts = sub_carts.clone();
    events.extend(decided);
    let mut cart = Cart::default();
    for event in events {
        cart.apply(event);
    }
    assert_eq!(cart.sub_carts, sub_carts);
    assert_eq!(cart.sub_carts.len(), 1);
}

#[test]
fn a_cart_in_checkout_is_locked() {
    let mut events = quoted(10_000);
    events.push(E::CheckoutStarted {
        sub_carts: vec![],
        started_at: NOW,
    });
    AggregateTest::<Cart>::given(events)
        .when(C::AddLine {
            line_id: lid(5),
            line: line("acme", 100, 1),
        })
        .then_expect_error(CartError::Locked);
}

#[test]
fn addresses_are_validated() {
    let mut bad = address().fields().clone();
    bad.country = "usa".into();
    assert!(Address::new(bad).is_err());
    let mut empty = address().fields().clone();
    empty.city = "  ".into();
    assert!(Address::new(empty).is_err());
}
