//! Payment rules, one test each.

use shopagent_domain::ids::{AuthorizationId, MerchantId, OrderId, PaymentId, RefundId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::payment::{
    CardReference, DeclineReason, Payment, PaymentCommand as C, PaymentError, PaymentEvent as E,
};
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC);
const EXPIRY: OffsetDateTime = datetime!(2026-11-26 10:00 UTC);

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

fn acme() -> MerchantId {
    MerchantId::parse("acme").expect("merchant")
}

fn auth(n: u128) -> AuthorizationId {
    AuthorizationId(uuid::Uuid::from_u128(n))
}

fn card() -> CardReference {
    CardReference::parse("ic_1NvLgS2eZvKYlo2C").expect("reference")
}

fn requested() -> E {
    E::CardRequested {
        payment_id: PaymentId(uuid::Uuid::nil()),
        order_id: OrderId(uuid::Uuid::nil()),
        shopper: "shopper-1".into(),
        mandate_id: None,
        merchant: acme(),
        cap: usd(11_500),
        requested_at: NOW,
    }
}

fn issued() -> Vec<E> {
    vec![
        requested(),
        E::CardIssued {
            card: card(),
            display: None,
            expires_at: EXPIRY,
            issued_at: NOW,
        },
    ]
}

fn approved() -> Vec<E> {
    let mut events = issued();
    events.push(E::AuthorizationApproved {
        authorization_id: auth(1),
        amount: usd(11_300),
        at: NOW,
    });
    events
}

fn decide(amount: Money, merchant: MerchantId, mandate_revoked: bool, at: OffsetDateTime) -> C {
    C::DecideAuthorization {
        authorization_id: auth(2),
        amount,
        merchant,
        mandate_revoked,
        at,
    }
}

fn declined(amount: Money, reason: DeclineReason, at: OffsetDateTime) -> E {
    E::AuthorizationDeclined {
        authorization_id: auth(2),
        amount,
        reason,
        at,
    }
}

#[test]
fn a_card_reference_is_never_a_card_number() {
    assert!(CardReference::parse("4242424242424242").is_err());
    assert!(CardReference::parse("card_4242424242424242_x").is_err());
    assert!(CardReference::parse("ic 1").is_err());
    assert!(CardReference::parse("ic_1NvLgS2eZvKYlo2C").is_ok());
}

#[test]
fn a_card_is_requested_with_a_positive_cap() {
    AggregateTest::<Payment>::given_no_previous_events()
        .when(C::RequestCard {
            payment_id: PaymentId::new(),
            order_id: OrderId::new(),
            shopper: "shopper-1".into(),
            mandate_id: None,
            merchant: acme(),
            cap: usd(0),
            at: NOW,
        })
        .then_expect_error(PaymentError::CapNotPositive);
}

#[test]
fn an_authorization_within_cap_at_the_locked_merchant_is_approved() {
    let command = C::DecideAuthorization {
        authorization_id: auth(1),
        amount: usd(11_300),
        merchant: acme(),
        mandate_revoked: false,
        at: NOW,
    };
    AggregateTest::<Payment>::given(issued())
        .when(command)
        .then_expect_events(vec![E::AuthorizationApproved {
            authorization_id: auth(1),
            amount: usd(11_300),
            at: NOW,
        }]);
}

#[test]
fn an_authorization_over_the_cap_is_declined() {
    AggregateTest::<Payment>::given(issued())
        .when(decide(usd(11_501), acme(), false, NOW))
        .then_expect_events(vec![declined(usd(11_501), DeclineReason::OverCap, NOW)]);
}

#[test]
fn an_authorization_from_another_merchant_is_declined() {
    let other = MerchantId::parse("elsewhere").expect("merchant");
    AggregateTest::<Payment>::given(issued())
        .when(decide(usd(100), other, false, NOW))
        .then_expect_events(vec![declined(
            usd(100),
            DeclineReason::MerchantMismatch,
            NOW,
        )]);
}

#[test]
fn a_single_use_card_declines_a_second_authorization() {
    AggregateTest::<Payment>::given(approved())
        .when(decide(usd(100), acme(), false, NOW))
        .then_expect_events(vec![declined(
            usd(100),
            DeclineReason::CardAlreadyUsed,
            NOW,
        )]);
}

#[test]
fn a_revoked_mandate_declines_every_authorization() {
    AggregateTest::<Payment>::given(issued())
        .when(decide(usd(100), acme(), true, NOW))
        .then_expect_events(vec![declined(usd(100), DeclineReason::MandateRevoked, NOW)]);
}

#[test]
fn an_expired_card_declines() {
    AggregateTest::<Payment>::given(issued())
        .when(decide(usd(100), acme(), false, EXPIRY))
        .then_expect_events(vec![declined(usd(100), DeclineReason::CardExpired, EXPIRY)]);
}

#[test]
fn a_voided_card_declines() {
    let mut events = issued();
    events.push(E::CardVoided {
        reason: "order failed".into(),
        at: NOW,
    });
    AggregateTest::<Payment>::given(events)
        .when(decide(usd(100), acme(), false, NOW))
        .then_expect_events(vec![declined(usd(100), DeclineReason::CardVoided, NOW)]);
}

#[test]
fn an_authorization_is_decided_once() {
    let mut events = issued();
    events.push(declined(usd(100), DeclineReason::OverCap, NOW));
    AggregateTest::<Payment>::given(events)
        .when(decide(usd(100), acme(), false, NOW))
        .then_expect_error(PaymentError::DuplicateAuthorization(auth(2)));
}

#[test]
fn a_capture_never_exceeds_its_authorization() {
    AggregateTest::<Payment>::given(approved())
        .when(C::Capture {
            authorization_id: auth(1),
            amount: usd(11_301),
            at: NOW,
        })
        .then_expect_error(PaymentError::OverAuthorization {
            amount: usd(11_301),
            authorized: usd(11_300),
        });
}

#[test]
fn only_an_approved_authorization_is_captured() {
    let mut events = issued();
    events.push(declined(usd(100), DeclineReason::OverCap, NOW));
    AggregateTest::<Payment>::given(events)
        .when(C::Capture {
            authorization_id: auth(2),
            amount: usd(100),
            at: NOW,
        })
        .then_expect_error(PaymentError::UnknownAuthorization(auth(2)));
}

#[test]
fn refunds_never_exceed_what_was_captured() {
    let mut events = approved();
    events.push(E::PaymentCaptured {
        authorization_id: auth(1),
        amount: usd(11_300),
        at: NOW,
    });
    events.push(E::PaymentRefunded {
        refund_id: RefundId(uuid::Uuid::from_u128(1)),
        amount: usd(11_000),
        at: NOW,
    });
    AggregateTest::<Payment>::given(events)
        .when(C::Refund {
            refund_id: RefundId(uuid::Uuid::from_u128(2)),
            amount: usd(301),
            at: NOW,
        })
        .then_expect_error(PaymentError::OverRefund {
            requested: usd(301),
            refundable: usd(300),
        });
}

#[test]
fn nothing_is_refunded_before_a_capture() {
    AggregateTest::<Payment>::given(approved())
        .when(C::Refund {
            refund_id: RefundId::new(),
            amount: usd(1),
            at: NOW,
        })
        .then_expect_error(PaymentError::OverRefund {
            requested: usd(1),
            refundable: usd(0),
        });
}

#[test]
fn a_captured_payment_cannot_be_voided() {
    let mut events = approved();
    events.push(E::PaymentCaptured {
        authorization_id: auth(1),
        amount: usd(11_300),
        at: NOW,
    });
    AggregateTest::<Payment>::given(events)
        .when(C::Void {
            reason: "r".into(),
            at: NOW,
        })
        .then_expect_error(PaymentError::AlreadyCapturedCannotVoid);
}

#[test]
fn an_uncaptured_card_is_voided() {
    AggregateTest::<Payment>::given(approved())
        .when(C::Void {
            reason: "order failed".into(),
            at: NOW,
        })
        .then_expect_events(vec![E::CardVoided {
            reason: "order failed".into(),
            at: NOW,
        }]);
}

#[test]
fn a_card_display_shows_only_the_brand_and_four_digits() {
    use shopagent_domain::payment::CardDisplay;
    let display = CardDisplay::parse("Visa", "4242").expect("brand and last four");
    assert_eq!((display.brand(), display.last4()), ("Visa", "4242"));
    for (brand, last4) in [
        ("Visa", "4242424242424242"),
        ("Visa", "424"),
        ("Visa", "42a2"),
        ("", "4242"),
        ("Visa 4242424242424242", "4242"),
    ] {
        assert!(CardDisplay::parse(brand, last4).is_err(), "{brand} {last4}");
    }
    // Stored events are checked the same way when read back.
    let forged = serde_json::json!({"brand": "Visa", "last4": "4242424242424242"});
    assert!(serde_json::from_value::<CardDisplay>(forged).is_err());
}
