//! Offer rules, one test each; the grouping of listings into products; price reading
//! under arbitrary amounts and notations.

use proptest::prelude::*;
use shopagent_domain::ids::{Category, MerchantId, OfferId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::offer::price::parse_price;
use shopagent_domain::offer::{
    Availability, Gtin, Offer, OfferCommand as C, OfferError, OfferEvent as E, OfferSource,
    ProductKey, ProductRecord,
};
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC);
const LATER: OffsetDateTime = datetime!(2026-11-26 10:00 UTC);

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

fn merchant(name: &str) -> MerchantId {
    MerchantId::parse(name).expect("merchant")
}

fn offer_id(id: &str) -> OfferId {
    OfferId::parse(id).expect("offer id")
}

fn record(price: i64) -> ProductRecord {
    ProductRecord {
        title: "Trail 2 two-person tent".into(),
        brand: Some("Northwind".into()),
        gtin: Some(Gtin::parse("4006381333931").expect("gtin")),
        mpn: Some("NW-T2".into()),
        category: Category::parse("outdoor/camping").expect("category"),
        merchant_category: Some("Camping > Tents".into()),
        price: usd(price),
        shipping: Some(usd(500)),
        availability: Some(Availability::InStock),
        delivery: None,
        returns: None,
        trust: None,
    }
}

fn ingest(price: i64, at: OffsetDateTime) -> C {
    C::Ingest {
        merchant: merchant("acme"),
        offer_id: offer_id("sku:tent"),
        record: Box::new(record(price)),
        citation: None,
        source: OfferSource::Feed,
        at,
    }
}

fn key(record: &ProductRecord) -> ProductKey {
    ProductKey::of(&merchant("acme"), &offer_id("sku:tent"), record)
}

fn listed(price: i64) -> E {
    E::OfferListed {
        merchant: merchant("acme"),
        offer_id: offer_id("sku:tent"),
        product_key: key(&record(price)),
        record: Box::new(record(price)),
        citation: None,
        source: OfferSource::Feed,
        at: NOW,
    }
}

#[test]
fn the_first_ingestion_lists_the_offer_with_its_product_key() {
    AggregateTest::<Offer>::given_no_previous_events()
        .when(ingest(19_900, NOW))
        .then_expect_events(vec![listed(19_900)]);
}

#[test]
fn ingesting_what_is_already_known_appends_nothing() {
    AggregateTest::<Offer>::given([listed(19_900)])
        .when(ingest(19_900, LATER))
        .then_expect_events(vec![]);
}

#[test]
fn a_changed_price_updates_the_offer() {
    AggregateTest::<Offer>::given([listed(19_900)])
        .when(ingest(17_900, LATER))
        .then_expect_events(vec![E::OfferUpdated {
            product_key: key(&record(17_900)),
            record: Box::new(record(17_900)),
            citation: None,
            source: OfferSource::Feed,
            at: LATER,
        }]);
}

#[test]
fn a_withdrawn_offer_seen_again_is_listed_again() {
    let events = AggregateTest::<Offer>::given([listed(19_900), E::OfferWithdrawn { at: NOW }])
        .when(ingest(19_900, LATER))
        .events();
    assert!(matches!(events[..], [E::OfferUpdated { .. }]), "{events:?}");
}

#[test]
fn an_offer_stream_holds_one_merchant_listing() {
    AggregateTest::<Offer>::given([listed(19_900)])
        .when(C::Ingest {
            merchant: merchant("bolt"),
            offer_id: offer_id("sku:tent"),
            record: Box::new(record(19_900)),
            citation: None,
            source: OfferSource::Feed,
            at: NOW,
        })
        .then_expect_error(OfferError::OtherListing {
            listed: "acme/sku:tent".into(),
            given: "bolt/sku:tent".into(),
        });
}

#[test]
fn shipping_is_in_the_price_currency_and_never_negative() {
    let mut eur_shipping = record(19_900);
    eur_shipping.shipping = Some(Money::new(500, Currency::parse("EUR").expect("EUR")));
    let mut negative = record(19_900);
    negative.shipping = Some(usd(-1));
    for (bad, why) in [
        (eur_shipping, "shipping must be in the price's currency"),
        (negative, "shipping must not be negative"),
    ] {
        AggregateTest::<Offer>::given_no_previous_events()
            .when(C::Ingest {
                merchant: merchant("acme"),
                offer_id: offer_id("sku:tent"),
                record: Box::new(bad),
                citation: None,
                source: OfferSource::Feed,
                at: NOW,
            })
            .then_expect_error(OfferError::InvalidRecord(why.into()));
    }
}

#[test]
fn only_a_listed_offer_is_withdrawn_and_only_once() {
    AggregateTest::<Offer>::given_no_previous_events()
        .when(C::Withdraw { at: NOW })
        .then_expect_error(OfferError::NotListed);
    AggregateTest::<Offer>::given([listed(19_900), E::OfferWithdrawn { at: NOW }])
        .when(C::Withdraw { at: LATER })
        .then_expect_error(OfferError::AlreadyWithdrawn);
}

#[test]
fn listings_group_by_gtin_then_brand_and_mpn_then_brand_and_title() {
    let a = record(19_900);
    let mut upc_form = record(18_000);
    upc_form.gtin = Some(Gtin::parse("04006381333931").expect("gtin-14"));
    upc_form.title = "Completely different words".into();
    assert_eq!(key(&a), key(&upc_form), "same GTIN");

    let mut mpn_a = record(19_900);
    mpn_a.gtin = None;
    let mut mpn_b = mpn_a.clone();
    mpn_b.mpn = Some("nw t2".into());
    mpn_b.brand = Some("NORTHWIND".into());
    assert_eq!(
        key(&mpn_a),
        key(&mpn_b),
        "same brand and MPN, written differently"
    );
    assert_eq!(key(&mpn_a).as_str(), "mpn:northwind/nwt2");

    let mut title_a = mpn_a.clone();
    title_a.mpn = None;
    let mut title_b = title_a.clone();
    title_b.title = "Northwind tent, two-person: Trail 2".into();
    assert_eq!(key(&title_a), key(&title_b), "same brand and title words");
    let mut other_model = title_a.clone();
    other_model.title = "Trail 3 three-person tent".into();
    assert_ne!(
        key(&title_a),
        key(&other_model),
        "another model is another product"
    );

    let mut anonymous = title_a.clone();
    anonymous.brand = None;
    assert_eq!(
        key(&anonymous).as_str(),
        "offer:acme/sku:tent",
        "no brand: alone"
    );
}

proptest! {
    /// Any amount written the way English-language shops write it reads back exactly.
    #[test]
    fn english_notation_reads_back(minor in 0i64..10_000_000_000, symbol in prop::bool::ANY) {
        let text = format!("{}{}.{:02}", if symbol { "$" } else { "" }, group(minor / 100, ','), minor % 100);
        let read = parse_price(&text, Some(Currency::parse("USD").expect("USD")));
        prop_assert_eq!(read, Ok(usd(minor)));
    }

    /// And the way continental European shops write it, code after the amount.
    #[test]
    fn european_notation_reads_back(minor in 0i64..10_000_000_000, separator in prop::sample::select(vec!['.', ' ', '\u{a0}'])) {
        let text = format!("{},{:02} EUR", group(minor / 100, separator), minor % 100);
        let read = parse_price(&text, None);
        prop_assert_eq!(read, Ok(Money::new(minor, Currency::parse("EUR").expect("EUR"))));
    }

    /// Nothing written makes the reader panic; what it accepts is never negative.
    #[test]
    fn any_text_is_read_or_refused(text in ".{0,24}") {
        if let Ok(money) = parse_price(&text, Some(Currency::parse("USD").expect("USD"))) {
            prop_assert!(!money.is_negative());
        }
    }
}

/// `1234567` as `1,234,567` (with `separator`).
fn group(whole: i64, separator: char) -> String {
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(separator);
        }
        out.push(c);
    }
    out
}

#[test]
fn names_served_are_the_names_stored() {
    use shopagent_domain::offer::normalize::Field;
    for availability in [
        Availability::InStock,
        Availability::LimitedAvailability,
        Availability::PreOrder,
        Availability::BackOrder,
        Availability::OutOfStock,
        Availability::Discontinued,
    ] {
        assert_eq!(
            serde_json::to_value(availability).expect("json"),
            availability.as_str()
        );
    }
    for field in Field::ALL {
        assert_eq!(serde_json::to_value(field).expect("json"), field.as_str());
    }
}
