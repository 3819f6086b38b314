//! Capability registry rules and the checkout path choice, one test each.

use std::collections::BTreeSet;

use shopagent_domain::ids::MerchantId;
use shopagent_domain::mandate::Mode;
use shopagent_domain::merchant::{
    Health, Merchant, MerchantCommand as C, MerchantError, MerchantEvent as E, MerchantProfile,
    Protocol, choose_path,
};
use shopagent_domain::order::CheckoutPath;
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC);

fn acme() -> MerchantId {
    MerchantId::parse("acme").expect("merchant")
}

fn profile(paths: &[CheckoutPath]) -> MerchantProfile {
    MerchantProfile {
        name: "Acme Outdoor".into(),
        protocol: Some(Protocol::Ucp),
        api_endpoint: Some("https://acme.example/ucp".into()),
        deeplink_base: Some("https://acme.example/p/".into()),
        headless_domain: Some("acme.example".into()),
        paths: paths.iter().copied().collect(),
        card_acceptor_ids: BTreeSet::new(),
    }
}

fn registered(paths: &[CheckoutPath]) -> E {
    E::MerchantRegistered {
        merchant: acme(),
        profile: profile(paths),
        at: NOW,
    }
}

fn merchant(events: Vec<E>) -> Merchant {
    use shopagent_domain::Aggregate;
    let mut merchant = Merchant::default();
    for event in events {
        merchant.apply(event);
    }
    merchant
}

const ALL: [CheckoutPath; 3] = [
    CheckoutPath::Api,
    CheckoutPath::Deeplink,
    CheckoutPath::Headless,
];

#[test]
fn a_merchant_is_registered_with_its_capabilities() {
    AggregateTest::<Merchant>::given_no_previous_events()
        .when(C::Register {
            merchant: acme(),
            profile: profile(&ALL),
            at: NOW,
        })
        .then_expect_events(vec![registered(&ALL)]);
}

#[test]
fn the_api_path_needs_a_protocol_and_an_endpoint() {
    let mut no_endpoint = profile(&[CheckoutPath::Api]);
    no_endpoint.api_endpoint = None;
    AggregateTest::<Merchant>::given_no_previous_events()
        .when(C::Register {
            merchant: acme(),
            profile: no_endpoint,
            at: NOW,
        })
        .then_expect_error(MerchantError::InvalidProfile(
            "the api path needs a protocol and an api_endpoint".into(),
        ));
}

#[test]
fn endpoints_are_https_except_on_loopback() {
    let mut plain = profile(&[CheckoutPath::Api]);
    plain.api_endpoint = Some("http://acme.example/ucp".into());
    AggregateTest::<Merchant>::given_no_previous_events()
        .when(C::Register {
            merchant: acme(),
            profile: plain,
            at: NOW,
        })
        .then_expect_error(MerchantError::InvalidProfile(
            "endpoints are https URLs (http only on loopback)".into(),
        ));
    let mut sandbox = profile(&[CheckoutPath::Api]);
    sandbox.api_endpoint = Some("http://127.0.0.1:9000/ucp".into());
    AggregateTest::<Merchant>::given_no_previous_events()
        .when(C::Register {
            merchant: acme(),
            profile: sandbox.clone(),
            at: NOW,
        })
        .then_expect_events(vec![E::MerchantRegistered {
            merchant: acme(),
            profile: sandbox,
            at: NOW,
        }]);
}

#[test]
fn a_merchant_supports_at_least_one_path() {
    AggregateTest::<Merchant>::given_no_previous_events()
        .when(C::Register {
            merchant: acme(),
            profile: profile(&[]),
            at: NOW,
        })
        .then_expect_error(MerchantError::InvalidProfile(
            "a merchant supports at least one checkout path".into(),
        ));
}

#[test]
fn a_merchant_is_registered_once() {
    AggregateTest::<Merchant>::given([registered(&ALL)])
        .when(C::Register {
            merchant: acme(),
            profile: profile(&ALL),
            at: NOW,
        })
        .then_expect_error(MerchantError::AlreadyExists);
}

#[test]
fn a_health_report_changes_health_only_when_it_differs() {
    AggregateTest::<Merchant>::given([registered(&ALL)])
        .when(C::ReportHealth {
            health: Health::Healthy,
            reason: "probe ok".into(),
            at: NOW,
        })
        .then_expect_events(vec![]);
    AggregateTest::<Merchant>::given([registered(&ALL)])
        .when(C::ReportHealth {
            health: Health::Down,
            reason: "circuit open after 5 failures".into(),
            at: NOW,
        })
        .then_expect_events(vec![E::MerchantHealthReported {
            health: Health::Down,
            reason: "circuit open after 5 failures".into(),
            at: NOW,
        }]);
}

#[test]
fn the_api_path_comes_first_when_the_merchant_is_up() {
    let choice = choose_path(Mode::Autopilot, &merchant(vec![registered(&ALL)]));
    assert_eq!(choice.path, CheckoutPath::Api);
    assert_eq!(choice.reason, "Acme Outdoor has a UCP API and is healthy");
}

#[test]
fn a_degraded_api_is_still_tried() {
    let degraded = merchant(vec![
        registered(&ALL),
        E::MerchantHealthReported {
            health: Health::Degraded,
            reason: "slow".into(),
            at: NOW,
        },
    ]);
    assert_eq!(
        choose_path(Mode::Autopilot, &degraded).path,
        CheckoutPath::Api
    );
}

#[test]
fn a_down_api_falls_back_to_a_deep_link() {
    let down = merchant(vec![
        registered(&ALL),
        E::MerchantHealthReported {
            health: Health::Down,
            reason: "5xx".into(),
            at: NOW,
        },
    ]);
    let choice = choose_path(Mode::Autopilot, &down);
    assert_eq!(choice.path, CheckoutPath::Deeplink);
    assert!(
        choice.reason.contains("its API is down"),
        "{}",
        choice.reason
    );
}

#[test]
fn headless_is_the_last_resort_and_only_when_allowlisted() {
    let headless_only = [CheckoutPath::Headless];
    let not_allowed = merchant(vec![registered(&headless_only)]);
    assert_eq!(
        choose_path(Mode::Autopilot, &not_allowed).path,
        CheckoutPath::Deeplink
    );
    let allowed = merchant(vec![
        registered(&headless_only),
        E::HeadlessAllowlistChanged {
            allowed: true,
            at: NOW,
        },
    ]);
    let choice = choose_path(Mode::Autopilot, &allowed);
    assert_eq!(choice.path, CheckoutPath::Headless);
    assert!(
        choice.reason.contains("acme.example is allowlisted"),
        "{}",
        choice.reason
    );
}

#[test]
fn assist_mode_always_ends_in_a_deep_link() {
    let choice = choose_path(Mode::Assist, &merchant(vec![registered(&ALL)]));
    assert_eq!(choice.path, CheckoutPath::Deeplink);
    assert_eq!(
        choice.reason,
        "assist mode never buys: the shopper completes the purchase"
    );
}

#[test]
fn an_unregistered_merchant_is_handed_to_the_shopper() {
    let choice = choose_path(Mode::Autopilot, &Merchant::default());
    assert_eq!(choice.path, CheckoutPath::Deeplink);
    assert!(choice.reason.contains("not in the capability registry"));
}
