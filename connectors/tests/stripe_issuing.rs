//! The Stripe-Issuing-shaped connector against the sandbox issuer, over real HTTP, and
//! its wire types against Stripe's own published fixtures.

use std::time::Duration;

use shopagent_connectors::Sandbox;
use shopagent_connectors::sandbox_issuer::SandboxIssuer;
use shopagent_connectors::stripe_issuing::wire::IssuingCard;
use shopagent_connectors::stripe_issuing::{StripeIssuing, StripeIssuingConfig};
use shopagent_domain::ids::{MerchantId, OrderId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::ports::{CallError, CardIssuer, CardRequest};

const KEY: &str = "sk_test_sandbox";

fn connector(base_url: &str, api_key: &str) -> StripeIssuing {
    StripeIssuing::new(StripeIssuingConfig {
        base_url: base_url.into(),
        api_key: api_key.into(),
        cardholder: "ich_shopagent".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("client")
}

fn request(key: &str, minor: i64) -> CardRequest {
    CardRequest {
        idempotency_key: key.into(),
        order_id: OrderId::new(),
        cap: Money::new(minor, Currency::parse("USD").expect("USD")),
        merchant: MerchantId::parse("acme").expect("merchant"),
        payment_ref: "acme/00000000-0000-0000-0000-000000000001".into(),
    }
}

#[tokio::test]
async fn a_card_is_issued_with_its_cap_and_only_once_per_key() {
    let sandbox = SandboxIssuer::new(KEY);
    let (url, _server) = sandbox.spawn().await.expect("sandbox");
    let issuer = connector(&url, KEY);
    let first = request("card/1", 1_260);
    let card = issuer.create_card(&first).await.expect("card");
    assert!(card.reference.as_str().starts_with("ic_"));
    assert!(card.expires_at > time::OffsetDateTime::now_utc());
    let stored = sandbox.card(card.reference.as_str()).expect("stored");
    assert_eq!(
        stored["spending_controls"]["spending_limits"][0]["amount"],
        1_260
    );
    assert_eq!(
        stored["spending_controls"]["spending_limits"][0]["interval"],
        "all_time"
    );
    assert_eq!(
        (stored["type"].as_str(), stored["status"].as_str()),
        (Some("virtual"), Some("active"))
    );
    assert_eq!(stored["metadata"]["merchant"], "acme");
    assert_eq!(
        stored["metadata"]["payment"],
        "acme/00000000-0000-0000-0000-000000000001"
    );
    assert!(
        stored.get("number").is_none(),
        "no card number ever leaves the issuer"
    );

    let again = issuer.create_card(&first).await.expect("replay");
    assert_eq!(
        again.reference, card.reference,
        "the same key is the same card"
    );
    assert_eq!(sandbox.cards_issued(), 1);
}

#[tokio::test]
async fn a_voided_card_is_canceled() {
    let sandbox = SandboxIssuer::new(KEY);
    let (url, _server) = sandbox.spawn().await.expect("sandbox");
    let issuer = connector(&url, KEY);
    let card = issuer
        .create_card(&request("card/2", 500))
        .await
        .expect("card");
    issuer
        .void_card(&card.reference, "void/2")
        .await
        .expect("void");
    issuer
        .void_card(&card.reference, "void/2")
        .await
        .expect("a retried void is fine");
    assert_eq!(
        sandbox.card(card.reference.as_str()).expect("card")["status"],
        "canceled"
    );
}

#[tokio::test]
async fn a_wrong_key_is_a_refusal_not_a_retry() {
    let sandbox = SandboxIssuer::new(KEY);
    let (url, _server) = sandbox.spawn().await.expect("sandbox");
    let error = connector(&url, "sk_test_wrong")
        .create_card(&request("card/3", 500))
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, CallError::Refused(message) if message.contains("401")),
        "{error:?}"
    );
    assert_eq!(sandbox.cards_issued(), 0);
}

#[tokio::test]
async fn a_reused_key_with_another_cap_is_refused() {
    let sandbox = SandboxIssuer::new(KEY);
    let (url, _server) = sandbox.spawn().await.expect("sandbox");
    let issuer = connector(&url, KEY);
    let first = request("card/4", 500);
    issuer.create_card(&first).await.expect("card");
    let other_cap = CardRequest {
        cap: Money::new(900, first.cap.currency),
        ..first
    };
    let error = issuer.create_card(&other_cap).await.expect_err("mismatch");
    assert!(
        matches!(&error, CallError::Refused(message) if message.contains("idempotency_error")),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unreachable_issuer_is_retried_later() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let error = connector(&url, KEY)
        .create_card(&request("card/5", 500))
        .await
        .expect_err("down");
    assert!(matches!(error, CallError::Unavailable(_)), "{error:?}");
}

#[test]
fn the_wire_types_read_stripe_s_published_issuing_card() {
    // The vendor specifications live in `shared/`, beside the repository.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared/specs/stripe/fixtures3.json"))
        .find(|path| path.is_file())
        .expect("shared/specs/stripe/fixtures3.json in a directory above the repository");
    let text = std::fs::read_to_string(fixtures).expect("read the fixtures");
    let all: serde_json::Value = serde_json::from_str(&text).expect("json");
    let resources = all.get("resources").unwrap_or(&all);
    let card: IssuingCard =
        serde_json::from_value(resources["issuing.card"].clone()).expect("issuing.card parses");
    assert_eq!(card.object, "issuing.card");
    assert!(card.id.starts_with("ic_"));
    assert_eq!((card.exp_month, card.exp_year), (8, 2030));
}
