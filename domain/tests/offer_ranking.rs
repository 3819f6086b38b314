//! Ranking: each factor moves the order the way a shopper expects, the mandate's limits
//! exclude with their reasons, and the explanation says the numbers the score used.

use std::collections::BTreeSet;

use shopagent_domain::ids::{Category, MerchantId, OfferId};
use shopagent_domain::mandate::{MandateTerms, Mode};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::offer::ranking::{
    Candidate, Exclusion, Ranking, RankingError, Shopper, Weights, rank,
};
use shopagent_domain::offer::{
    Availability, DeliveryEstimate, ProductRecord, ReturnPolicy, TrustSignals,
};
use time::Date;
use time::macros::date;

/// A Wednesday.
const TODAY: Date = date!(2026 - 11 - 25);

fn usd_currency() -> Currency {
    Currency::parse("USD").expect("USD")
}

fn usd(minor: i64) -> Money {
    Money::new(minor, usd_currency())
}

/// An offer from `merchant` at `price` with `shipping`, delivered in 3–5 days, 30-day
/// free returns, rated 4.5 by 200.
fn offer(merchant: &str, price: i64, shipping: Option<i64>) -> Candidate {
    Candidate {
        merchant: MerchantId::parse(merchant).expect("merchant"),
        offer_id: OfferId::parse(&format!("sku:{merchant}")).expect("offer"),
        record: ProductRecord {
            title: "Trail 2 tent".into(),
            brand: Some("Northwind".into()),
            gtin: None,
            mpn: None,
            category: Category::parse("outdoor/camping").expect("category"),
            merchant_category: None,
            price: usd(price),
            shipping: shipping.map(usd),
            availability: Some(Availability::InStock),
            delivery: DeliveryEstimate::new(3, 5),
            returns: Some(ReturnPolicy {
                window_days: 30,
                free: true,
            }),
            trust: TrustSignals::new(4.5, 5.0, 200),
        },
    }
}

fn shopper() -> Shopper<'static> {
    Shopper {
        today: Some(TODAY),
        ..Shopper::default()
    }
}

fn ranked(candidates: &[Candidate], shopper: &Shopper<'_>, weights: Weights) -> Ranking {
    rank(candidates, usd_currency(), shopper, weights).expect("ranking")
}

fn order(ranking: &Ranking) -> Vec<String> {
    ranking
        .ranked
        .iter()
        .map(|r| r.merchant.to_string())
        .collect()
}

#[test]
fn the_lower_landed_cost_wins_not_the_lower_price() {
    let ranking = ranked(
        &[
            offer("acme", 10_000, Some(1_000)),
            offer("bolt", 9_500, Some(2_000)),
        ],
        &shopper(),
        Weights::default(),
    );
    assert_eq!(order(&ranking), ["acme", "bolt"]);
    assert_eq!(ranking.ranked[0].landed_cost, usd(11_000));
    assert!(
        ranking.ranked[0]
            .reason
            .starts_with("cheapest at 110.00 USD delivered"),
        "{}",
        ranking.ranked[0].reason
    );
    assert!(ranking.ranked[1].reason.starts_with("115.00 USD delivered"));
}

#[test]
fn unstated_shipping_counts_as_the_dearest_stated() {
    let ranking = ranked(
        &[
            offer("acme", 10_000, None),
            offer("bolt", 10_000, Some(500)),
            offer("cole", 10_000, Some(1_500)),
        ],
        &shopper(),
        Weights::default(),
    );
    assert_eq!(order(&ranking)[0], "bolt");
    let acme = ranking
        .ranked
        .iter()
        .find(|r| r.merchant.as_str() == "acme");
    assert_eq!(acme.map(|r| r.landed_cost), Some(usd(11_500)));
}

#[test]
fn the_tax_estimate_is_part_of_the_landed_cost() {
    let taxed = Shopper {
        tax_bps: 800,
        ..shopper()
    };
    let ranking = ranked(
        &[offer("acme", 10_000, Some(0))],
        &taxed,
        Weights::default(),
    );
    assert_eq!(ranking.ranked[0].landed_cost, usd(10_800));
}

#[test]
fn sooner_delivery_wins_at_equal_cost_and_the_reason_names_the_day() {
    let mut fast = offer("acme", 10_000, Some(0));
    fast.record.delivery = DeliveryEstimate::new(1, 2);
    let ranking = ranked(
        &[offer("bolt", 10_000, Some(0)), fast],
        &shopper(),
        Weights::default(),
    );
    assert_eq!(order(&ranking), ["acme", "bolt"]);
    // Two business days from Wednesday: Friday.
    assert_eq!(ranking.ranked[0].arrives_by, Some(date!(2026 - 11 - 27)));
    assert!(
        ranking.ranked[0].reason.contains("arrives by Friday"),
        "{}",
        ranking.ranked[0].reason
    );
    // Five business days from Wednesday: next Wednesday, over a weekend.
    assert_eq!(ranking.ranked[1].arrives_by, Some(date!(2026 - 12 - 02)));
    assert!(ranking.ranked[0].breakdown.delivery > ranking.ranked[1].breakdown.delivery);
}

#[test]
fn an_offer_arriving_after_the_shoppers_date_loses_its_delivery_score() {
    let mut slow = offer("acme", 9_000, Some(0));
    slow.record.delivery = DeliveryEstimate::new(5, 8);
    let needs_it_monday = Shopper {
        deliver_by: Some(date!(2026 - 11 - 30)),
        ..shopper()
    };
    let mut in_time = offer("bolt", 9_000, Some(0));
    in_time.record.delivery = DeliveryEstimate::new(1, 2);
    let ranking = ranked(&[slow, in_time], &needs_it_monday, Weights::default());
    let acme = ranking
        .ranked
        .iter()
        .find(|r| r.merchant.as_str() == "acme")
        .expect("acme ranked");
    assert_eq!(acme.breakdown.delivery, 0.0);
    assert!(acme.reason.contains("too late"), "{}", acme.reason);
    assert_eq!(order(&ranking), ["bolt", "acme"]);
}

#[test]
fn longer_free_returns_win_at_equal_cost_and_delivery() {
    let mut strict = offer("acme", 10_000, Some(0));
    strict.record.returns = Some(ReturnPolicy {
        window_days: 14,
        free: false,
    });
    let ranking = ranked(
        &[strict, offer("bolt", 10_000, Some(0))],
        &shopper(),
        Weights::default(),
    );
    assert_eq!(order(&ranking), ["bolt", "acme"]);
    assert!(ranking.ranked[0].reason.contains("free 30-day returns"));
    assert!(
        ranking.ranked[1]
            .reason
            .contains("14-day returns at the shopper's cost")
    );
}

#[test]
fn a_better_rated_merchant_wins_and_few_reviews_count_for_less() {
    let mut loved = offer("acme", 10_000, Some(0));
    loved.record.trust = TrustSignals::new(4.9, 5.0, 5_000);
    let mut barely_known = offer("bolt", 10_000, Some(0));
    barely_known.record.trust = TrustSignals::new(5.0, 5.0, 2);
    let ranking = ranked(&[barely_known, loved], &shopper(), Weights::default());
    assert_eq!(order(&ranking), ["acme", "bolt"]);
    assert!(
        ranking.ranked[0]
            .reason
            .contains("rated 4.9/5 (5000 reviews)")
    );
}

#[test]
fn the_callers_weights_decide_between_cheap_and_fast() {
    let mut fast_but_dear = offer("acme", 15_000, Some(0));
    fast_but_dear.record.delivery = DeliveryEstimate::new(0, 1);
    let cheap_but_slower = offer("bolt", 10_000, Some(0));
    let candidates = [fast_but_dear, cheap_but_slower];
    let by_default = ranked(&candidates, &shopper(), Weights::default());
    assert_eq!(order(&by_default)[0], "bolt");
    let in_a_hurry = Weights {
        cost: 0.2,
        delivery: 0.7,
        returns: 0.05,
        trust: 0.05,
    };
    assert_eq!(
        order(&ranked(&candidates, &shopper(), in_a_hurry))[0],
        "acme"
    );
}

#[test]
fn the_breakdown_adds_up_to_the_score() {
    let mut other = offer("bolt", 14_000, None);
    other.record.trust = None;
    other.record.returns = None;
    other.record.delivery = None;
    let ranking = ranked(
        &[offer("acme", 10_000, Some(500)), other],
        &shopper(),
        Weights::default(),
    );
    for r in &ranking.ranked {
        let sum = r.breakdown.cost + r.breakdown.delivery + r.breakdown.returns + r.breakdown.trust;
        assert!((sum - r.score).abs() < 1e-9);
        assert!((0.0..=100.0).contains(&r.score), "{}", r.score);
    }
    assert!(
        ranking.ranked[1]
            .reason
            .contains("delivery time not stated")
    );
    assert!(
        ranking.ranked[1]
            .reason
            .contains("return policy not stated")
    );
}

fn mandate() -> MandateTerms {
    MandateTerms {
        mode: Mode::Autopilot,
        currency: usd_currency(),
        period_budget: None,
        per_order_limit: Some(usd(15_000)),
        allowed_merchants: BTreeSet::new(),
        blocked_merchants: [MerchantId::parse("shady").expect("merchant")].into(),
        blocked_categories: [Category::parse("alcohol").expect("category")].into(),
        approval_threshold: None,
        price_drift_tolerance_bps: 300,
        expires_at: None,
    }
}

#[test]
fn what_the_mandate_forbids_is_excluded_with_why() {
    let terms = mandate();
    let under_mandate = Shopper {
        mandate: Some(&terms),
        budget_left: Some(usd(12_000)),
        ..shopper()
    };
    let mut wine = offer("cellar", 3_000, Some(0));
    wine.record.category = Category::parse("alcohol/wine").expect("category");
    let mut gone = offer("gone", 5_000, Some(0));
    gone.record.availability = Some(Availability::OutOfStock);
    let mut euros = offer("euro", 5_000, None);
    euros.record.price = Money::new(5_000, Currency::parse("EUR").expect("EUR"));
    let ranking = ranked(
        &[
            offer("acme", 10_000, Some(0)),
            offer("shady", 5_000, Some(0)),
            wine,
            offer("dear", 16_000, Some(0)),
            gone,
            euros,
        ],
        &under_mandate,
        Weights::default(),
    );
    assert_eq!(order(&ranking), ["acme"]);
    let why = |merchant: &str| -> Vec<Exclusion> {
        ranking
            .excluded
            .iter()
            .find(|e| e.merchant.as_str() == merchant)
            .map(|e| e.reasons.clone())
            .unwrap_or_default()
    };
    assert_eq!(why("shady"), [Exclusion::MerchantBlocked]);
    assert_eq!(
        why("cellar"),
        [Exclusion::CategoryBlocked {
            category: Category::parse("alcohol").expect("category")
        }],
        "a blocked category blocks what lies beneath it"
    );
    assert_eq!(
        why("dear"),
        [
            Exclusion::OverPerOrderLimit {
                landed_cost: usd(16_000),
                limit: usd(15_000)
            },
            Exclusion::OverBudget {
                landed_cost: usd(16_000),
                left: usd(12_000)
            }
        ]
    );
    assert_eq!(
        why("gone"),
        [Exclusion::NotAvailable {
            availability: Availability::OutOfStock
        }]
    );
    assert!(matches!(why("euro")[..], [Exclusion::OtherCurrency { .. }]));
    let dear = ranking
        .excluded
        .iter()
        .find(|e| e.merchant.as_str() == "dear")
        .expect("dear excluded");
    assert_eq!(
        dear.reason,
        "160.00 USD is over the per-order limit of 150.00 USD; 160.00 USD is over the 120.00 USD left in the budget"
    );
}

#[test]
fn a_hint_says_what_budget_unlocks_a_better_offer() {
    let terms = MandateTerms {
        per_order_limit: None,
        ..mandate()
    };
    let under_mandate = Shopper {
        mandate: Some(&terms),
        budget_left: Some(usd(10_000)),
        ..shopper()
    };
    let mut best = offer("acme", 10_400, Some(0));
    best.record.delivery = DeliveryEstimate::new(1, 1);
    best.record.trust = TrustSignals::new(4.9, 5.0, 9_000);
    let mut worse = offer("bolt", 9_800, Some(0));
    worse.record.delivery = DeliveryEstimate::new(8, 12);
    worse.record.returns = None;
    let ranking = ranked(&[best, worse], &under_mandate, Weights::default());
    assert_eq!(order(&ranking), ["bolt"]);
    let [hint] = &ranking.hints[..] else {
        panic!("one hint expected: {:?}", ranking.hints);
    };
    assert_eq!(hint.merchant.as_str(), "acme");
    assert_eq!(hint.raise_by, usd(400));
    assert_eq!(
        hint.text,
        "raising the budget by 4.00 USD unlocks Trail 2 tent at acme, which would rank first"
    );

    // No hint when the excluded offer would not beat what is admitted.
    let mut poor = offer("cole", 10_400, Some(0));
    poor.record.trust = TrustSignals::new(1.0, 5.0, 500);
    poor.record.delivery = DeliveryEstimate::new(20, 30);
    let ranking = ranked(
        &[poor, offer("bolt", 9_800, Some(0))],
        &under_mandate,
        Weights::default(),
    );
    assert!(ranking.hints.is_empty(), "{:?}", ranking.hints);
}

#[test]
fn weights_are_non_negative_and_not_all_zero() {
    for weights in [
        Weights {
            cost: -1.0,
            ..Weights::default()
        },
        Weights {
            cost: 0.0,
            delivery: 0.0,
            returns: 0.0,
            trust: 0.0,
        },
        Weights {
            trust: f64::NAN,
            ..Weights::default()
        },
    ] {
        assert_eq!(
            rank(
                &[offer("acme", 1, None)],
                usd_currency(),
                &shopper(),
                weights
            ),
            Err(RankingError::InvalidWeights)
        );
    }
}
