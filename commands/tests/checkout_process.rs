//! The checkout process manager against the real store, with the card issuer and the
//! merchant played by in-test ports that honour idempotency keys as the real ones must.

mod checkout_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use checkout_support::*;
use shopagent_commands::SubscriberRunner;
use shopagent_commands::test_support::TestStore;
use shopagent_domain::order::{FailureReason, OrderStatus};
use shopagent_domain::payment::PaymentStatus;
use shopagent_domain::ports::PlaceError;
use tokio_util::sync::CancellationToken;

shopagent_commands::on_both_backends!(
    a_placed_order_has_one_card_and_commits_its_spend,
    a_declined_order_voids_its_card_and_releases_its_budget,
    an_unavailable_merchant_is_retried_with_the_same_key,
    a_crash_after_the_merchant_placed_the_order_places_it_once,
    a_merchant_without_a_connector_fails_cleanly,
    a_merchant_that_stays_unavailable_is_given_up_and_reported_down,
    placement_attempts_survive_a_restart,
);

async fn a_placed_order_has_one_card_and_commits_its_spend(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(Ok("A-1001".into()))),
    );
    settle(&test.store, &fixture, &issuer, Some(&merchant)).await;

    let order = order(&fixture).await;
    assert_eq!(
        (order.status, order.merchant_reference.as_deref()),
        (OrderStatus::Placed, Some("A-1001"))
    );
    let payment = payment(&fixture).await;
    assert_eq!(payment.status, PaymentStatus::CardIssued);
    assert_eq!(
        payment.terms.expect("terms").cap,
        usd(1_260),
        "total plus 5 %"
    );
    assert_eq!(issuer.created.lock().expect("lock").len(), 1);
    assert_eq!(merchant.calls(), vec![format!("order/{}", fixture.order)]);
    let mandate = mandate(&fixture).await;
    assert!(mandate.reservations.is_empty());
    assert_eq!(mandate.spent.values().sum::<i64>(), 1_200);
}

async fn a_declined_order_voids_its_card_and_releases_its_budget(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let declined = Err(PlaceError::Failed {
        reason: FailureReason::PaymentDeclined,
        detail: "card declined".into(),
    });
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(declined)),
    );
    settle(&test.store, &fixture, &issuer, Some(&merchant)).await;

    let order = order(&fixture).await;
    assert_eq!(
        (order.status, order.failure),
        (OrderStatus::Failed, Some(FailureReason::PaymentDeclined))
    );
    assert_eq!(payment(&fixture).await.status, PaymentStatus::Voided);
    assert_eq!(issuer.voided.lock().expect("lock").len(), 1);
    let mandate = mandate(&fixture).await;
    assert!(mandate.reservations.is_empty(), "reservation released");
    assert_eq!(mandate.spent.values().sum::<i64>(), 0, "nothing spent");
}

async fn an_unavailable_merchant_is_retried_with_the_same_key(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(Ok("A-7".into()))),
    );
    merchant.unavailable_first.store(2, Ordering::SeqCst);
    settle(&test.store, &fixture, &issuer, Some(&merchant)).await;
    let key = format!("order/{}", fixture.order);
    assert_eq!(merchant.calls(), vec![key.clone(), key.clone(), key]);
    assert_eq!(order(&fixture).await.status, OrderStatus::Placed);
    assert_eq!(
        issuer.created.lock().expect("lock").len(),
        1,
        "one card, whatever the retries"
    );
    assert_eq!(
        health(&fixture).await,
        shopagent_domain::merchant::Health::Healthy,
        "opened after two failures, closed by the success"
    );
}

async fn a_crash_after_the_merchant_placed_the_order_places_it_once(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(Ok("A-9".into()))),
    );
    *merchant.hang_first_call.lock().expect("lock") = true;
    let task = tokio::spawn(
        SubscriberRunner::new(
            test.store.clone(),
            process(&fixture, issuer.clone(), Some(merchant.clone())),
        )
        .run(CancellationToken::new()),
    );
    tokio::time::timeout(Duration::from_secs(30), merchant.hanging.notified())
        .await
        .expect("reaches the merchant");
    task.abort();
    let _ = task.await;

    // A new instance, with nothing in memory, resumes from the log.
    let restarted = test.reopen().await;
    let resumed = fixture.on(&restarted);
    settle(&restarted, &resumed, &issuer, Some(&merchant)).await;
    let key = format!("order/{}", resumed.order);
    assert_eq!(
        merchant.calls(),
        vec![key.clone(), key],
        "the retry reuses the key: one order at the merchant"
    );
    assert_eq!(
        order(&resumed).await.merchant_reference.as_deref(),
        Some("A-9")
    );
    let cards: BTreeSet<String> = issuer
        .created
        .lock()
        .expect("lock")
        .iter()
        .cloned()
        .collect();
    assert_eq!(cards.len(), 1, "at most one card");
    assert!(mandate(&resumed).await.reservations.is_empty());
    restarted.database().close().await;
}

async fn a_merchant_without_a_connector_fails_cleanly(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let issuer = Arc::new(Issuer::default());
    settle(&test.store, &fixture, &issuer, None).await;
    let order = order(&fixture).await;
    assert_eq!(
        (order.status, order.failure),
        (
            OrderStatus::Failed,
            Some(FailureReason::MerchantUnavailable)
        )
    );
    assert_eq!(payment(&fixture).await.status, PaymentStatus::Voided);
    assert!(mandate(&fixture).await.reservations.is_empty());
}

async fn a_merchant_that_stays_unavailable_is_given_up_and_reported_down(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(Ok("never".into()))),
    );
    merchant.unavailable_first.store(100, Ordering::SeqCst);
    settle(&test.store, &fixture, &issuer, Some(&merchant)).await;
    assert_eq!(merchant.calls().len(), 4, "bounded: four attempts");
    let order = order(&fixture).await;
    assert_eq!(
        (order.status, order.failure),
        (
            OrderStatus::Failed,
            Some(FailureReason::MerchantUnavailable)
        )
    );
    assert_eq!(payment(&fixture).await.status, PaymentStatus::Voided);
    assert!(mandate(&fixture).await.reservations.is_empty());
    assert_eq!(
        health(&fixture).await,
        shopagent_domain::merchant::Health::Down,
        "the circuit opened after two failures"
    );
}

async fn placement_attempts_survive_a_restart(test: &TestStore) {
    let fixture = fixture(&test.store).await;
    let (issuer, merchant) = (
        Arc::new(Issuer::default()),
        Arc::new(Merchant::answering(Ok("never".into()))),
    );
    merchant.unavailable_first.store(100, Ordering::SeqCst);
    // The first instance meets two unanswered attempts, then stops.
    let first = SubscriberRunner::new(
        test.store.clone(),
        process(&fixture, issuer.clone(), Some(merchant.clone())),
    );
    for _ in 0..2_000 {
        if merchant.calls().len() == 2 {
            break;
        }
        first.step().await.expect("step");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(merchant.calls().len(), 2);
    assert_eq!(
        order(&fixture).await.placement_attempts,
        2,
        "recorded on the order"
    );
    drop(first);

    // A new instance, nothing in memory, keeps counting from the log: two more.
    settle(&test.store, &fixture, &issuer, Some(&merchant)).await;
    assert_eq!(
        merchant.calls().len(),
        4,
        "four attempts in all, across the restart"
    );
    let order = order(&fixture).await;
    assert_eq!(
        (order.status, order.failure),
        (
            OrderStatus::Failed,
            Some(FailureReason::MerchantUnavailable)
        )
    );
    assert!(mandate(&fixture).await.reservations.is_empty());
}
