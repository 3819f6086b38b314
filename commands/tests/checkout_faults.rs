//! Crash-resume of the checkout process manager: the process dies between every pair of
//! its steps — after each command it appends and after each outside call, before the
//! event that caused them is checkpointed — and a new instance, with nothing in memory,
//! resumes from the log. Whatever the crash point: one order at the merchant, at most
//! one card, and the reservation either committed (placed) or released (failed).
//!
//! The crash is a fail point (`fail` crate, compiled in by the `failpoints` feature)
//! that panics the process's task once. Fail points are global, so the scenarios run
//! one at a time under `FailScenario`.

mod checkout_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use checkout_support::*;
use shopagent_commands::SubscriberRunner;
use shopagent_commands::test_support::TestStore;
use shopagent_domain::order::{FailureReason, OrderStatus};
use shopagent_domain::payment::PaymentStatus;
use shopagent_domain::ports::PlaceError;

/// Every point of the placed path, in the order the process reaches them.
const PLACED_PATH: &[&str] = &[
    "request-card",
    "issuer-create",
    "card-issued",
    "submit",
    "merchant-place",
    "placed-or-failed",
    "commit-spend",
];

/// Every point of the declined path: placement fails, the card is voided at the issuer
/// and in the log, the reservation released.
const DECLINED_PATH: &[&str] = &[
    "request-card",
    "issuer-create",
    "card-issued",
    "submit",
    "merchant-place",
    "placed-or-failed",
    "issuer-void",
    "void",
    "release",
];

shopagent_commands::on_both_backends!(
    a_crash_at_any_step_of_a_placement_places_once_with_one_card,
    a_crash_at_any_step_of_a_decline_voids_and_releases_once,
);

struct Resumed {
    fixture: Fixture,
    issuer: Arc<Issuer>,
    merchant: Arc<Merchant>,
}

/// A fresh store on the backend of `test`: each crash scenario starts from nothing.
async fn fresh_like(test: &TestStore) -> TestStore {
    match test.config.database_url {
        Some(_) => TestStore::postgres().await,
        None => TestStore::sqlite().await,
    }
}

/// Runs the process until it crashes at `point`, then resumes it in a new instance
/// until it settles.
async fn crash_then_resume(
    test: &TestStore,
    point: &str,
    answer: Result<String, PlaceError>,
) -> Resumed {
    let fixture = fixture(&test.store).await;
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(answer)),
    );
    let name = format!("checkout/after/{point}");
    fail::cfg(&name, "1*panic(crash injected)").expect("fail point");
    let store = test.store.clone();
    let first = process(&fixture, issuer.clone(), Some(merchant.clone()));
    let crashed = tokio::spawn(async move {
        drain(&store, &SubscriberRunner::new(store.clone(), first)).await;
    })
    .await;
    fail::remove(&name);
    assert!(
        crashed
            .as_ref()
            .is_err_and(tokio::task::JoinError::is_panic),
        "the process was to crash after {point}"
    );

    let restarted = test.reopen().await;
    let fixture = fixture.on(&restarted);
    settle(&restarted, &fixture, &issuer, Some(&merchant)).await;
    Resumed {
        fixture,
        issuer,
        merchant,
    }
}

/// One order at the merchant (every attempt with the order's key) and one card (every
/// request with the payment's key).
fn assert_once(resumed: &Resumed, point: &str) {
    let keys: BTreeSet<String> = resumed.merchant.calls().into_iter().collect();
    assert!(
        keys.len() <= 1,
        "{point}: one order key at the merchant, saw {keys:?}"
    );
    let cards: BTreeSet<String> = resumed
        .issuer
        .created
        .lock()
        .expect("lock")
        .iter()
        .cloned()
        .collect();
    assert_eq!(cards.len(), 1, "{point}: at most one card, saw {cards:?}");
}

async fn a_crash_at_any_step_of_a_placement_places_once_with_one_card(test: &TestStore) {
    let _exclusive = fail::FailScenario::setup();
    for point in PLACED_PATH {
        let test = fresh_like(test).await;
        let resumed = crash_then_resume(&test, point, Ok("A-42".into())).await;
        assert_once(&resumed, point);
        let order = order(&resumed.fixture).await;
        assert_eq!(
            (order.status, order.merchant_reference.as_deref()),
            (OrderStatus::Placed, Some("A-42")),
            "{point}"
        );
        assert_eq!(
            payment(&resumed.fixture).await.status,
            PaymentStatus::CardIssued,
            "{point}"
        );
        let mandate = mandate(&resumed.fixture).await;
        assert!(
            mandate.reservations.is_empty(),
            "{point}: nothing left held"
        );
        assert_eq!(
            mandate.spent.values().sum::<i64>(),
            1_200,
            "{point}: the spend committed once"
        );
        test.cleanup().await;
    }
}

async fn a_crash_at_any_step_of_a_decline_voids_and_releases_once(test: &TestStore) {
    let _exclusive = fail::FailScenario::setup();
    let declined = || {
        Err(PlaceError::Failed {
            reason: FailureReason::PaymentDeclined,
            detail: "card declined".into(),
        })
    };
    for point in DECLINED_PATH {
        let test = fresh_like(test).await;
        let resumed = crash_then_resume(&test, point, declined()).await;
        assert_once(&resumed, point);
        let order = order(&resumed.fixture).await;
        assert_eq!(
            (order.status, order.failure),
            (OrderStatus::Failed, Some(FailureReason::PaymentDeclined)),
            "{point}"
        );
        assert_eq!(
            payment(&resumed.fixture).await.status,
            PaymentStatus::Voided,
            "{point}"
        );
        let voided: BTreeSet<String> = resumed
            .issuer
            .voided
            .lock()
            .expect("lock")
            .iter()
            .cloned()
            .collect();
        assert_eq!(voided.len(), 1, "{point}: the one card voided");
        let mandate = mandate(&resumed.fixture).await;
        assert!(mandate.reservations.is_empty(), "{point}: released");
        assert_eq!(mandate.spent.values().sum::<i64>(), 0, "{point}");
        test.cleanup().await;
    }
}
