//! Every parser of outside input in the connectors, fed what an attacker or a broken
//! merchant could send: it answers (an error, a report), and never panics. Numbers go to
//! their extremes, where arithmetic on them overflows.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use shopagent_connectors::easypost::webhook as easypost;
use shopagent_connectors::product_page::extract;
use shopagent_connectors::ucp::catalog;
use shopagent_connectors::ucp::webhook::{self as ucp, WebhookSigner};

const NOW: i64 = 1_790_000_000;

fn any_number() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        any::<i64>(),
        (NOW - 1_000)..(NOW + 1_000),
    ]
}

proptest! {
    #[test]
    fn a_ucp_signature_header_of_any_shape_is_refused_without_a_panic(
        iat in any_number(),
        alg in prop_oneof![Just("ES256".to_owned()), Just("RS256".to_owned()), "[A-Z0-9]{0,6}"],
        kid in ".{0,20}",
        signature in "[A-Za-z0-9_-]{0,90}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
        raw in ".{0,200}",
    ) {
        let keys = [WebhookSigner::generate("k1").public_key()];
        let protected = serde_json::json!({"alg": alg, "kid": kid, "b64": false, "crit": ["b64"], "iat": iat});
        let header = format!("{}..{signature}", URL_SAFE_NO_PAD.encode(protected.to_string()));
        prop_assert!(ucp::verify(&header, &body, &keys, NOW).is_err());
        prop_assert!(ucp::verify(&raw, &body, &keys, NOW).is_err());
        let _ = ucp::parse_order_event(&body);
        let _ = ucp::parse_order_event(raw.as_bytes());
    }

    #[test]
    fn an_easypost_event_is_refused_unless_signed_and_never_panics(
        header in ".{0,120}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
        updated_at in prop_oneof![Just("-9999-01-01T00:00:00Z".to_owned()), Just("9999-12-31T23:59:59Z".to_owned()), ".{0,30}"],
    ) {
        prop_assert!(easypost::verify("secret", &header, &body, NOW).is_err());
        // Signed, with a time at the ends of the calendar or none at all.
        let event = serde_json::json!({"id": "evt", "description": "tracker.updated", "updated_at": updated_at, "result": {}});
        let body = event.to_string();
        let signed = easypost::sign("secret", body.as_bytes());
        let _ = easypost::verify("secret", &signed, body.as_bytes(), NOW);
    }

    #[test]
    fn any_page_is_read_or_reported_without_a_panic(
        html in ".{0,400}",
        json in ".{0,200}",
        price in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|n| n.to_string()), ".{0,20}"],
    ) {
        let _ = extract(&html, "https://shop.example/p");
        let ld = format!(
            r#"<script type="application/ld+json">{json}</script>
               <script type="application/ld+json">{{"@type":"Product","name":"x","offers":{{"@type":"Offer","price":"{price}","priceCurrency":"USD"}}}}</script>
               <div itemscope itemtype="https://schema.org/Product"><span itemprop="price" content="{price}"></span></div>
               <meta property="product:price:amount" content="{price}">"#
        );
        let _ = extract(&ld, "https://shop.example/p");
    }

    #[test]
    fn any_catalog_answer_becomes_offers_or_nothing_without_a_panic(
        amount in any_number(),
        currency in prop_oneof![Just("USD".to_owned()), Just("JPY".to_owned()), Just("BHD".to_owned()), "[A-Z]{0,4}"],
        id in ".{0,30}",
        status in ".{0,15}",
    ) {
        let answer = serde_json::json!({
            "products": [{
                "id": "p", "title": "Tent", "description": {"plain": ""},
                "categories": [{"value": "1"}, {"value": ""}],
                "rating": {"value": f64::MAX, "scale_max": -1.0, "count": u64::MAX},
                "variants": [
                    {"id": id, "title": "", "description": {"plain": ""}, "price": {"amount": amount, "currency": currency},
                     "barcodes": [{"type": "gtin", "value": id}], "availability": {"status": status}},
                    {"id": 7, "price": "free"}
                ]
            }, 12, null],
            "pagination": {"cursor": id, "has_next_page": true}
        });
        let response: catalog::SearchResponse = serde_json::from_value(answer).expect("the envelope reads");
        let page = catalog::page(response);
        prop_assert!(page.items.len() <= 1);
    }
}
