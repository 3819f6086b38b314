//! The UCP merchant connector against the sandbox UCP merchant, over real HTTP.

mod common;

use std::time::Duration;

use common::order;

use shopagent_connectors::Sandbox;
use shopagent_connectors::sandbox_merchant::{FailureMode, SandboxMerchant};
use shopagent_connectors::ucp::{UcpConfig, UcpMerchant};
use shopagent_domain::ids::OfferId;
use shopagent_domain::money::Money;
use shopagent_domain::order::FailureReason;
use shopagent_domain::ports::{CatalogueQuery, MerchantGateway, PlaceError};

async fn merchant() -> (SandboxMerchant, UcpMerchant) {
    let sandbox = SandboxMerchant::new();
    let (endpoint, _server) = sandbox.spawn().await.expect("sandbox");
    let client = UcpMerchant::new(
        UcpConfig {
            endpoint,
            agent_profile: "https://shopagent.invalid/profile".into(),
        },
        reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("client"),
    );
    (sandbox, client)
}

#[tokio::test]
async fn an_order_is_placed_once_per_key() {
    let (sandbox, ucp) = merchant().await;
    let request = order("order/1");
    let reference = ucp.place_order(&request).await.expect("placed");
    assert_eq!(reference, "ord_1");
    // A retry after a lost answer lands on the same order.
    assert_eq!(ucp.place_order(&request).await.expect("replayed"), "ord_1");
    assert_eq!(sandbox.orders(), ["ord_1"]);
}

#[tokio::test]
async fn merchant_refusals_become_typed_failures() {
    for (mode, reason) in [
        (FailureMode::OutOfStock, FailureReason::InventoryChanged),
        (FailureMode::AddressRejected, FailureReason::AddressInvalid),
        (FailureMode::PaymentDeclined, FailureReason::PaymentDeclined),
    ] {
        let (sandbox, ucp) = merchant().await;
        sandbox.set_failure_mode(mode);
        let error = ucp
            .place_order(&order("order/2"))
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, PlaceError::Failed { reason: got, .. } if *got == reason),
            "{mode:?}: {error:?}"
        );
        assert!(sandbox.orders().is_empty());
    }
}

#[tokio::test]
async fn an_order_without_a_destination_is_an_address_problem() {
    let (_sandbox, ucp) = merchant().await;
    let mut request = order("order/3");
    request.ship_to = None;
    let error = ucp.place_order(&request).await.expect_err("incomplete");
    assert!(
        matches!(error, PlaceError::Failed { reason: FailureReason::MerchantUnavailable, ref detail } if detail.starts_with("missing")),
        "{error:?}"
    );
}

#[tokio::test]
async fn server_errors_and_slow_answers_are_retryable() {
    let (sandbox, ucp) = merchant().await;
    sandbox.set_failure_mode(FailureMode::ServerError);
    assert!(matches!(
        ucp.place_order(&order("order/4")).await,
        Err(PlaceError::Unavailable(_))
    ));
    sandbox.set_failure_mode(FailureMode::Slow(Duration::from_secs(2)));
    assert!(
        matches!(
            ucp.place_order(&order("order/5")).await,
            Err(PlaceError::Unavailable(_))
        ),
        "timeout is retryable"
    );
    // Recovered, the retried key places exactly one order.
    sandbox.set_failure_mode(FailureMode::None);
    assert_eq!(
        ucp.place_order(&order("order/4")).await.expect("placed"),
        "ord_1"
    );
    assert_eq!(sandbox.orders().len(), 1);
}

#[tokio::test]
async fn discovery_finds_the_rest_endpoint_and_agrees_on_a_version() {
    let sandbox = SandboxMerchant::new();
    let (base, _server) = sandbox.spawn().await.expect("sandbox");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let found = shopagent_connectors::ucp::discover(&http, &base)
        .await
        .expect("profile");
    assert_eq!(found.endpoint, base);
    assert_eq!(found.version, "2026-01-11");
}

#[test]
fn negotiation_refuses_an_older_checkout_or_none_at_all() {
    use shopagent_connectors::ucp::wire::Profile;
    use shopagent_connectors::ucp::{DiscoveryError, negotiate};
    let profile = |version: &str, capability: &str| -> Profile {
        serde_json::from_value(serde_json::json!({"ucp": {"version": version, "services": {"dev.ucp.shopping": {"version": version, "rest": {"endpoint": "https://shop.example/ucp"}}}, "capabilities": [{"name": capability, "version": version}]}})).expect("profile")
    };
    assert!(
        negotiate(&profile("2026-06-01", "dev.ucp.shopping.checkout")).is_ok(),
        "a later, compatible version"
    );
    assert_eq!(
        negotiate(&profile("2025-10-01", "dev.ucp.shopping.checkout")),
        Err(DiscoveryError::UnsupportedVersion {
            theirs: "2025-10-01".into()
        })
    );
    assert_eq!(
        negotiate(&profile("2026-01-11", "dev.ucp.shopping.catalog")),
        Err(DiscoveryError::NoCheckout)
    );
    let no_rest: Profile = serde_json::from_value(
        serde_json::json!({"ucp": {"version": "2026-01-11", "services": {}, "capabilities": []}}),
    )
    .expect("profile");
    assert_eq!(negotiate(&no_rest), Err(DiscoveryError::NoRestService));
}

#[tokio::test]
async fn the_merchant_prices_the_items_and_a_higher_price_is_not_bought() {
    let (sandbox, ucp) = merchant().await;
    sandbox.stock("sku:tent", "Trail Tent 2P", 12_000);
    let error = ucp
        .place_order(&order("order/6"))
        .await
        .expect_err("over the agreed total");
    assert!(
        matches!(&error, PlaceError::Failed { reason: FailureReason::PriceChanged, detail } if detail.contains("26420")),
        "{error:?}"
    );
    assert!(sandbox.orders().is_empty(), "nothing bought");
    let operations: Vec<_> = sandbox.exchanges().iter().map(|e| e.operation).collect();
    assert_eq!(
        operations,
        ["create", "update", "cancel"],
        "the session is canceled"
    );
}

#[tokio::test]
async fn an_item_the_merchant_does_not_sell_is_unavailable() {
    let (_sandbox, ucp) = merchant().await;
    let mut request = order("order/7");
    request.lines[0].offer_id = OfferId::parse("sku:unicorn").expect("offer");
    let error = ucp.place_order(&request).await.expect_err("unknown item");
    assert!(
        matches!(
            &error,
            PlaceError::Failed {
                reason: FailureReason::InventoryChanged,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_quote_is_the_merchant_s_own_totals_and_leaves_no_session_open() {
    use shopagent_domain::ports::QuoteRequest;
    let (sandbox, ucp) = merchant().await;
    assert!(ucp.capabilities().quote);
    let order = order("quote/1");
    let request = QuoteRequest {
        idempotency_key: "quote/1".into(),
        lines: order.lines.clone(),
        currency: order.total.currency,
        ship_to: order.ship_to.clone().expect("address"),
    };
    let quote = ucp.quote(&request).await.expect("quoted");
    let usd = order.total.currency;
    assert_eq!(
        (quote.items_total, quote.shipping, quote.tax),
        (
            Money::new(20_000, usd),
            Money::new(500, usd),
            Money::new(1_600, usd)
        )
    );
    assert!(quote.expires_at > time::OffsetDateTime::now_utc());
    let operations: Vec<_> = sandbox.exchanges().iter().map(|e| e.operation).collect();
    assert_eq!(operations, ["create", "update", "cancel"]);
    assert!(sandbox.orders().is_empty(), "a quote buys nothing");
    // What UCP does not offer is refused, not faked.
    assert!(!ucp.capabilities().cancel);
    assert!(ucp.cancel_order("ord_1", "cancel/1").await.is_err());
}

#[tokio::test]
async fn the_catalog_is_read_page_by_page_and_searched_by_words() {
    let (sandbox, ucp) = merchant().await;
    sandbox.stock("sku:tarp", "Ultralight Tarp", 3_900);
    let mut query = CatalogueQuery {
        text: None,
        cursor: None,
        limit: 4,
    };
    let mut seen = Vec::new();
    loop {
        let page = ucp.catalogue(&query).await.expect("a page");
        assert!(page.items.len() <= 4);
        seen.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    let ids: Vec<&str> = seen
        .iter()
        .filter_map(|item| item.offer_id.as_ref().map(OfferId::as_str))
        .collect();
    assert_eq!(
        ids,
        [
            "sku:bag",
            "sku:lamp",
            "sku:mug",
            "sku:stove",
            "sku:tarp",
            "sku:tent"
        ],
        "every item once, with the id checkout names"
    );
    let tarp = seen
        .iter()
        .find(|item| item.merchant_ref == "sku:tarp")
        .expect("the stocked item");
    assert_eq!(
        (tarp.raw.price.as_deref(), tarp.raw.currency.as_deref()),
        (Some("39.00"), Some("USD"))
    );
    assert_eq!(tarp.raw.availability.as_deref(), Some("in_stock"));
    assert_eq!(tarp.digest.len(), 64);

    let found = ucp
        .catalogue(&CatalogueQuery {
            text: Some("sleeping bag".into()),
            cursor: None,
            limit: 10,
        })
        .await
        .expect("search");
    assert_eq!(found.items.len(), 1);
    assert_eq!(
        found.items[0].raw.title.as_deref(),
        Some("Down Sleeping Bag")
    );
    assert_eq!(found.next_cursor, None);
}
