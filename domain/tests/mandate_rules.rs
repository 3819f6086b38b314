//! Mandate rules, one test each: given past events, when a command, then events or a
//! rejection.

use std::collections::BTreeSet;

use shopagent_domain::ids::{Category, MandateId, MerchantId, ReservationId};
use shopagent_domain::mandate::{
    BudgetPeriod, Mandate, MandateCommand as C, MandateError, MandateEvent as E, MandateTerms,
    Mode, PeriodBudget, ReleaseReason,
};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::{date, datetime};

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC); // a Wednesday

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

fn merchant(name: &str) -> MerchantId {
    MerchantId::parse(name).expect("merchant")
}

fn category(name: &str) -> Category {
    Category::parse(name).expect("category")
}

fn terms() -> MandateTerms {
    MandateTerms {
        mode: Mode::Autopilot,
        currency: Currency::parse("USD").expect("USD"),
        period_budget: Some(PeriodBudget {
            period: BudgetPeriod::Week,
            limit: usd(50_000),
        }),
        per_order_limit: Some(usd(20_000)),
        allowed_merchants: BTreeSet::new(),
        blocked_merchants: [merchant("shady-deals")].into(),
        blocked_categories: [category("alcohol")].into(),
        approval_threshold: Some(usd(15_000)),
        price_drift_tolerance_bps: 300,
        expires_at: Some(datetime!(2027-01-01 0:00 UTC)),
    }
}

fn created_with(terms: MandateTerms) -> E {
    E::MandateCreated {
        mandate_id: MandateId(uuid::Uuid::nil()),
        shopper: "shopper-1".into(),
        terms,
        created_at: NOW,
    }
}

fn created() -> E {
    created_with(terms())
}

fn reserve(id: ReservationId, minor: i64) -> C {
    C::Reserve {
        reservation_id: id,
        merchant: merchant("acme"),
        categories: [category("outdoor")].into(),
        amount: usd(minor),
        approval_required: false,
        at: NOW,
    }
}

fn reserved(id: ReservationId, minor: i64, awaiting_approval: bool) -> E {
    E::BudgetReserved {
        reservation_id: id,
        merchant: merchant("acme"),
        amount: usd(minor),
        period_start: date!(2026 - 11 - 23),
        awaiting_approval,
    }
}

fn rid(n: u128) -> ReservationId {
    ReservationId(uuid::Uuid::from_u128(n))
}

#[test]
fn a_mandate_is_created_with_its_terms() {
    AggregateTest::<Mandate>::given_no_previous_events()
        .when(C::Create {
            mandate_id: MandateId(uuid::Uuid::nil()),
            shopper: "shopper-1".into(),
            terms: terms(),
            at: NOW,
        })
        .then_expect_events(vec![created()]);
}

#[test]
fn a_mandate_cannot_be_created_twice() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::Create {
            mandate_id: MandateId::new(),
            shopper: "x".into(),
            terms: terms(),
            at: NOW,
        })
        .then_expect_error(MandateError::AlreadyExists);
}

#[test]
fn every_limit_is_in_the_mandate_currency() {
    let mut eur_limit = terms();
    eur_limit.per_order_limit = Some(Money::new(100, Currency::parse("EUR").expect("EUR")));
    let rejected = AggregateTest::<Mandate>::given_no_previous_events().when(C::Create {
        mandate_id: MandateId::new(),
        shopper: "s".into(),
        terms: eur_limit,
        at: NOW,
    });
    rejected.then_expect_error(MandateError::InvalidTerms(
        "every limit must be in USD, got EUR".into(),
    ));
}

#[test]
fn a_mandate_cannot_expire_before_it_starts() {
    let mut past = terms();
    past.expires_at = Some(NOW);
    AggregateTest::<Mandate>::given_no_previous_events()
        .when(C::Create {
            mandate_id: MandateId::new(),
            shopper: "s".into(),
            terms: past,
            at: NOW,
        })
        .then_expect_error(MandateError::InvalidTerms(
            "expiry must be in the future".into(),
        ));
}

#[test]
fn a_checkout_reserves_budget_within_the_limits() {
    AggregateTest::<Mandate>::given([created()])
        .when(reserve(rid(1), 10_000))
        .then_expect_events(vec![reserved(rid(1), 10_000, false)]);
}

#[test]
fn a_reservation_counts_against_the_current_budget_period() {
    let events = AggregateTest::<Mandate>::given([created()])
        .when(reserve(rid(1), 100))
        .events();
    // 2026-11-25 is a Wednesday: the ISO week started on Monday the 23rd.
    assert!(
        matches!(events[0], E::BudgetReserved { period_start, .. } if period_start == date!(2026-11-23))
    );
}

#[test]
fn an_order_above_the_approval_threshold_waits_for_the_shopper() {
    AggregateTest::<Mandate>::given([created()])
        .when(reserve(rid(1), 15_001))
        .then_expect_events(vec![reserved(rid(1), 15_001, true)]);
}

#[test]
fn an_order_above_the_per_order_limit_is_refused() {
    AggregateTest::<Mandate>::given([created()])
        .when(reserve(rid(1), 20_001))
        .then_expect_error(MandateError::OverPerOrderLimit {
            amount: usd(20_001),
            limit: usd(20_000),
        });
}

#[test]
fn reservations_and_spend_together_never_exceed_the_period_budget() {
    AggregateTest::<Mandate>::given([
        created(),
        reserved(rid(1), 20_000, false),
        E::SpendCommitted {
            reservation_id: rid(1),
            amount: usd(20_000),
            period_start: date!(2026 - 11 - 23),
        },
        reserved(rid(2), 20_000, false),
    ])
    .when(reserve(rid(3), 10_001))
    .then_expect_error(MandateError::OverPeriodBudget {
        amount: usd(10_001),
        remaining: usd(10_000),
    });
}

#[test]
fn the_budget_resets_with_a_new_period() {
    let last_week = E::SpendCommitted {
        reservation_id: rid(9),
        amount: usd(50_000),
        period_start: date!(2026 - 11 - 16),
    };
    AggregateTest::<Mandate>::given([
        created(),
        E::BudgetReserved {
            reservation_id: rid(9),
            merchant: merchant("acme"),
            amount: usd(50_000),
            period_start: date!(2026 - 11 - 16),
            awaiting_approval: false,
        },
        last_week,
    ])
    .when(reserve(rid(1), 10_000))
    .then_expect_events(vec![reserved(rid(1), 10_000, false)]);
}

#[test]
fn a_released_reservation_frees_its_budget() {
    AggregateTest::<Mandate>::given([
        created(),
        reserved(rid(1), 20_000, false),
        reserved(rid(2), 20_000, false),
        E::ReservationReleased {
            reservation_id: rid(2),
            reason: ReleaseReason::CheckoutFailed,
        },
    ])
    .when(reserve(rid(3), 20_000))
    .then_expect_events(vec![reserved(rid(3), 20_000, true)]);
}

#[test]
fn only_allowed_merchants_are_used_when_an_allow_list_exists() {
    let mut allow = terms();
    allow.allowed_merchants = [merchant("trusted")].into();
    AggregateTest::<Mandate>::given([created_with(allow)])
        .when(reserve(rid(1), 100))
        .then_expect_error(MandateError::MerchantNotAllowed(merchant("acme")));
}

#[test]
fn blocked_merchants_are_refused() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::Reserve {
            reservation_id: rid(1),
            merchant: merchant("shady-deals"),
            categories: BTreeSet::new(),
            amount: usd(100),
            approval_required: false,
            at: NOW,
        })
        .then_expect_error(MandateError::MerchantBlocked(merchant("shady-deals")));
}

#[test]
fn blocked_categories_are_refused() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::Reserve {
            reservation_id: rid(1),
            merchant: merchant("acme"),
            categories: [category("wine-club"), category("alcohol")].into(),
            amount: usd(100),
            approval_required: false,
            at: NOW,
        })
        .then_expect_error(MandateError::CategoryBlocked(category("alcohol")));
}

#[test]
fn a_blocked_category_blocks_what_lies_beneath_it() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::Reserve {
            reservation_id: rid(1),
            merchant: merchant("acme"),
            categories: [category("outdoor/camping"), category("alcohol/wine")].into(),
            amount: usd(100),
            approval_required: false,
            at: NOW,
        })
        .then_expect_error(MandateError::CategoryBlocked(category("alcohol/wine")));
}

#[test]
fn a_reservation_is_in_the_mandate_currency() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::Reserve {
            reservation_id: rid(1),
            merchant: merchant("acme"),
            categories: BTreeSet::new(),
            amount: Money::new(100, Currency::parse("EUR").expect("EUR")),
            approval_required: false,
            at: NOW,
        })
        .then_expect_error(MandateError::Money(
            shopagent_domain::money::MoneyError::CurrencyMismatch(
                Currency::parse("USD").expect("USD"),
                Currency::parse("EUR").expect("EUR"),
            ),
        ));
}

#[test]
fn a_reservation_amount_is_positive() {
    AggregateTest::<Mandate>::given([created()])
        .when(reserve(rid(1), 0))
        .then_expect_error(MandateError::AmountNotPositive);
}

#[test]
fn an_assist_mandate_never_buys() {
    let mut assist = terms();
    assist.mode = Mode::Assist;
    AggregateTest::<Mandate>::given([created_with(assist)])
        .when(reserve(rid(1), 100))
        .then_expect_error(MandateError::AssistModeNeverBuys);
}

#[test]
fn an_expired_mandate_buys_nothing() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::Reserve {
            reservation_id: rid(1),
            merchant: merchant("acme"),
            categories: BTreeSet::new(),
            amount: usd(100),
            approval_required: false,
            at: datetime!(2027-01-01 0:00 UTC),
        })
        .then_expect_error(MandateError::Expired);
}

#[test]
fn a_revoked_mandate_buys_nothing() {
    AggregateTest::<Mandate>::given([
        created(),
        E::MandateRevoked {
            reason: "lost phone".into(),
            revoked_at: NOW,
        },
    ])
    .when(reserve(rid(1), 100))
    .then_expect_error(MandateError::Revoked);
}

#[test]
fn revoking_releases_reservations_waiting_for_approval() {
    AggregateTest::<Mandate>::given([
        created(),
        reserved(rid(1), 100, false),
        reserved(rid(2), 16_000, true),
    ])
    .when(C::Revoke {
        reason: "kill switch".into(),
        at: NOW,
    })
    .then_expect_events(vec![
        E::MandateRevoked {
            reason: "kill switch".into(),
            revoked_at: NOW,
        },
        E::ReservationReleased {
            reservation_id: rid(2),
            reason: ReleaseReason::MandateRevoked,
        },
    ]);
}

#[test]
fn a_placed_order_commits_after_revocation() {
    AggregateTest::<Mandate>::given([
        created(),
        reserved(rid(1), 900, false),
        E::MandateRevoked {
            reason: "r".into(),
            revoked_at: NOW,
        },
    ])
    .when(C::CommitSpend {
        reservation_id: rid(1),
        amount: usd(900),
    })
    .then_expect_events(vec![E::SpendCommitted {
        reservation_id: rid(1),
        amount: usd(900),
        period_start: date!(2026 - 11 - 23),
    }]);
}

#[test]
fn a_mandate_is_revoked_once() {
    AggregateTest::<Mandate>::given([
        created(),
        E::MandateRevoked {
            reason: "r".into(),
            revoked_at: NOW,
        },
    ])
    .when(C::Revoke {
        reason: "again".into(),
        at: NOW,
    })
    .then_expect_error(MandateError::Revoked);
}

#[test]
fn a_reservation_id_is_used_once() {
    AggregateTest::<Mandate>::given([created(), reserved(rid(1), 100, false)])
        .when(reserve(rid(1), 100))
        .then_expect_error(MandateError::DuplicateReservation(rid(1)));
}

#[test]
fn the_shopper_approves_a_waiting_reservation() {
    AggregateTest::<Mandate>::given([created(), reserved(rid(1), 16_000, true)])
        .when(C::ApproveReservation {
            reservation_id: rid(1),
            at: NOW,
        })
        .then_expect_events(vec![E::ReservationApproved {
            reservation_id: rid(1),
        }]);
}

#[test]
fn only_a_waiting_reservation_can_be_approved() {
    AggregateTest::<Mandate>::given([created(), reserved(rid(1), 100, false)])
        .when(C::ApproveReservation {
            reservation_id: rid(1),
            at: NOW,
        })
        .then_expect_error(MandateError::NotAwaitingApproval(rid(1)));
}

#[test]
fn a_denied_approval_releases_the_reservation() {
    AggregateTest::<Mandate>::given([created(), reserved(rid(1), 16_000, true)])
        .when(C::DenyReservation {
            reservation_id: rid(1),
        })
        .then_expect_events(vec![E::ReservationReleased {
            reservation_id: rid(1),
            reason: ReleaseReason::ApprovalDenied,
        }]);
}

#[test]
fn spend_waiting_for_approval_cannot_be_committed() {
    AggregateTest::<Mandate>::given([created(), reserved(rid(1), 16_000, true)])
        .when(C::CommitSpend {
            reservation_id: rid(1),
            amount: usd(16_000),
        })
        .then_expect_error(MandateError::AwaitingApproval(rid(1)));
}

#[test]
fn committed_spend_never_exceeds_the_reservation() {
    AggregateTest::<Mandate>::given([created(), reserved(rid(1), 1_000, false)])
        .when(C::CommitSpend {
            reservation_id: rid(1),
            amount: usd(1_001),
        })
        .then_expect_error(MandateError::OverReservation {
            amount: usd(1_001),
            reserved: usd(1_000),
        });
}

#[test]
fn an_unknown_reservation_cannot_be_released() {
    AggregateTest::<Mandate>::given([created()])
        .when(C::ReleaseReservation {
            reservation_id: rid(7),
            reason: ReleaseReason::CheckoutCancelled,
        })
        .then_expect_error(MandateError::UnknownReservation(rid(7)));
}

#[test]
fn commands_on_a_missing_mandate_are_refused() {
    AggregateTest::<Mandate>::given_no_previous_events()
        .when(reserve(rid(1), 100))
        .then_expect_error(MandateError::NotFound);
}

#[test]
fn a_price_drift_waits_for_approval_even_below_the_threshold() {
    let command = C::Reserve {
        reservation_id: rid(1),
        merchant: merchant("acme"),
        categories: [category("outdoor")].into(),
        amount: usd(100),
        approval_required: true,
        at: NOW,
    };
    AggregateTest::<Mandate>::given([created()])
        .when(command)
        .then_expect_events(vec![reserved(rid(1), 100, true)]);
}
