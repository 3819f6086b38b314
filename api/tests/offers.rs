//! `POST /v1/offers/extract`: a product page's offers are read, reported field by field,
//! and listed as offer events citing the page; bad input changes nothing.

mod common;

use common::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use shopagent::auth::Role;
use shopagent_connectors::sandbox_merchant::FailureMode;

on_both_backends!(
    a_product_page_lists_its_offer_with_the_page_as_citation,
    reading_the_same_page_again_appends_nothing_and_a_new_price_updates,
    an_offer_without_a_readable_price_is_reported_not_listed,
    every_offer_on_a_page_is_listed,
    bad_requests_get_a_problem_and_change_nothing,
    listed_offers_are_found_ranked_and_explained,
    the_mandate_excludes_with_why_and_hints_at_what_budget_unlocks,
    bad_searches_get_a_problem,
    chosen_offers_are_compared_as_the_log_has_them,
    an_index_ahead_of_the_log_is_rebuilt_from_it,
    a_run_records_its_searches_and_comparisons_with_every_score,
    a_merchant_catalogue_feeds_and_searches_offers_into_the_log,
    the_first_page_is_the_best_of_all_matches_not_of_the_index_s_first,
    the_index_is_rebuilt_beside_the_live_one_and_reported_to_ops,
);

fn page(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../connectors/tests/fixtures/product_pages/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture page")
}

async fn extract(app: &TestApp, token: &str, url: &str, html: &str) -> common::Reply {
    app.post(
        "/v1/offers/extract",
        token,
        json!({"url": url, "html": html, "merchant": "acme"}),
    )
    .await
}

async fn head(app: &TestApp) -> i64 {
    app.store.head_position().await.expect("head")
}

async fn a_product_page_lists_its_offer_with_the_page_as_citation(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let html = page("jsonld_complete.html");
    let reply = extract(
        &app,
        &app.shopper("alice"),
        "https://acme.example/p/trail-2",
        &html,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = &reply.body;
    assert_eq!(body["digest"].as_str().map(str::len), Some(64));
    let offer = &body["offers"][0];
    assert_eq!(offer["listed"], true);
    assert_eq!(offer["version"], 1);
    assert_eq!(offer["merchant"], "acme");
    assert_eq!(offer["offer_id"], "sku:acm-t2-grn");
    assert_eq!(offer["product_key"], "gtin:04006381333931");
    assert_eq!(offer["found_in"], json!(["json_ld"]));
    assert_eq!(
        offer["fields"],
        json!({
            "title": "Trail 2 Two-Person Tent", "brand": "Northwind", "gtin": "04006381333931",
            "mpn": "NW-T2", "category": "outdoor/camping",
            "merchant_category": "Sporting Goods > Outdoor Recreation > Camping & Hiking > Tents",
            "price": {"minor": 129_900, "currency": "USD"}, "shipping": {"minor": 0, "currency": "USD"},
            "availability": "in_stock", "delivery": {"min_days": 2, "max_days": 5},
            "returns": {"window_days": 30, "free": true}, "trust": {"rating": 4.6, "reviews": 1280}
        })
    );
    assert_eq!(offer["issues"], json!([]));

    // The event carries the page as citation. (On PostgreSQL a committed event is
    // readable once no older transaction is in flight: wait for it.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let listed = loop {
        let events = app
            .store
            .read_log(shopagent_commands::LogCursor::START, 100)
            .await
            .expect("log");
        if let Some(listed) = events.into_iter().find(|e| e.event_type == "OfferListed") {
            break listed;
        }
        assert!(std::time::Instant::now() < deadline, "no OfferListed event");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(listed.aggregate_id, "acme/offer/acme/sku:acm-t2-grn");
    let citation = &listed.payload["OfferListed"]["citation"];
    assert_eq!(citation["url"], "https://acme.example/p/trail-2");
    assert_eq!(citation["digest"], body["digest"]);
    assert_eq!(listed.payload["OfferListed"]["source"], "page");
    app.stop().await;
}

async fn reading_the_same_page_again_appends_nothing_and_a_new_price_updates(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let agent = app.token(
        "acme",
        "agent-1",
        Role::Agent,
        Some(&uuid::Uuid::new_v4().to_string()),
    );
    let html = page("jsonld_complete.html");
    let url = "https://acme.example/p/trail-2";
    assert_eq!(
        extract(&app, &agent, url, &html).await.body["offers"][0]["version"],
        1
    );
    let before = head(&app).await;
    let again = extract(&app, &agent, url, &html).await;
    assert_eq!(again.body["offers"][0]["version"], 1);
    assert_eq!(head(&app).await, before, "nothing appended");

    let cheaper = html.replace("\"1299.00\"", "\"1199.00\"");
    let updated = extract(&app, &agent, url, &cheaper).await;
    assert_eq!(updated.body["offers"][0]["version"], 2);
    assert_eq!(
        updated.body["offers"][0]["fields"]["price"],
        json!({"minor": 119_900, "currency": "USD"})
    );
    assert_ne!(updated.body["digest"], again.body["digest"]);
    app.stop().await;
}

async fn an_offer_without_a_readable_price_is_reported_not_listed(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let before = head(&app).await;
    let reply = extract(
        &app,
        &app.shopper("alice"),
        "https://runco.example/trail-runner-5",
        &page("dollar_sign_only.html"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let offer = &reply.body["offers"][0];
    assert_eq!(offer["listed"], false);
    assert_eq!(offer["version"], Value::Null);
    assert_eq!(offer["fields"]["title"], "Trail Runner 5 Shoe");
    assert_eq!(offer["fields"]["price"], Value::Null);
    let price_issue = offer["issues"]
        .as_array()
        .and_then(|issues| issues.iter().find(|i| i["field"] == "price"))
        .expect("the price is reported");
    assert_eq!(price_issue["problem"], "unreadable");
    assert_eq!(price_issue["value"], "$129.99");
    assert_eq!(
        price_issue["why"],
        "the currency of \"$129.99\" is not stated"
    );
    assert_eq!(head(&app).await, before, "nothing appended");
    app.stop().await;
}

async fn every_offer_on_a_page_is_listed(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let reply = extract(
        &app,
        &app.shopper("alice"),
        "https://soundhaus.example/search?q=headphones",
        &page("jsonld_item_list.html"),
    )
    .await;
    let offers = reply.body["offers"].as_array().expect("offers");
    assert_eq!(offers.len(), 3);
    assert!(offers.iter().all(|o| o["listed"] == true), "{offers:?}");
    let ids: Vec<&str> = offers
        .iter()
        .filter_map(|o| o["offer_id"].as_str())
        .collect();
    // Two offers carry SKUs; the first has none and is named by the page and its place.
    assert!(
        ids[0].starts_with("url:") && ids[0].ends_with("/0"),
        "{ids:?}"
    );
    assert_eq!(ids[1..], ["sku:sme-wht", "sku:sme-gld"]);
    // A page without a product lists nothing.
    let article = extract(
        &app,
        &app.shopper("alice"),
        "https://blog.example/tips",
        &page("no_product.html"),
    )
    .await;
    assert_eq!(article.status, StatusCode::OK);
    assert_eq!(article.body["offers"], json!([]));
    app.stop().await;
}

async fn bad_requests_get_a_problem_and_change_nothing(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let alice = app.shopper("alice");
    let html = page("jsonld_complete.html");
    let before = head(&app).await;
    for (body, status, code) in [
        (
            json!({"url": "ftp://acme.example/p", "html": html}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            json!({"url": "not a url", "html": html}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            json!({"url": "https://acme.example/p", "html": html, "merchant": "Not A Slug"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            json!({"url": "https://acme.example/p"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"url": "https://acme.example/p", "html": html, "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ] {
        app.post("/v1/offers/extract", &alice, body)
            .await
            .assert_problem(status, code);
    }
    let finance = app.token("acme", "finance-1", Role::Finance, None);
    extract(&app, &finance, "https://acme.example/p", &html)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let huge = "x".repeat(5 * 1024 * 1024);
    extract(&app, &alice, "https://acme.example/p", &huge)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(head(&app).await, before, "nothing appended");

    // A page of a megabyte and more is read.
    let padded = html.replace("<body>", &format!("<body><!--{}-->", "p".repeat(1_500_000)));
    let read = extract(&app, &alice, "https://acme.example/p/trail-2", &padded).await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["offers"][0]["listed"], true);
    app.stop().await;
}

/// A page offering the Trail 2 tent (category "Camping > Tents").
fn tent(price: &str, shipping: &str, days: u16, return_days: u16) -> String {
    product_page(
        "Trail 2 tent",
        price,
        shipping,
        days,
        return_days,
        "Camping > Tents",
    )
}

/// A product page with one offer in JSON-LD.
fn product_page(
    title: &str,
    price: &str,
    shipping: &str,
    days: u16,
    return_days: u16,
    category: &str,
) -> String {
    format!(
        r#"<html><head><script type="application/ld+json">
        {{"@context":"https://schema.org","@type":"Product","name":"{title}","brand":"Northwind","category":"{category}",
          "offers":{{"@type":"Offer","price":"{price}","priceCurrency":"USD","availability":"https://schema.org/InStock",
            "shippingDetails":{{"shippingRate":{{"value":"{shipping}","currency":"USD"}},
              "deliveryTime":{{"handlingTime":{{"minValue":0,"maxValue":0}},"transitTime":{{"minValue":{days},"maxValue":{days}}}}}}},
            "hasMerchantReturnPolicy":{{"merchantReturnDays":{return_days},"returnFees":"https://schema.org/FreeReturn"}}}}}}
        </script></head><body></body></html>"#
    )
}

/// Lists each (merchant, page) as read from `https://{merchant}.example/p`.
async fn list_offers(app: &TestApp, pages: &[(&str, String)]) {
    for (merchant, html) in pages {
        let reply = app
            .post(
                "/v1/offers/extract",
                &app.shopper("alice"),
                json!({"url": format!("https://{merchant}.example/p"), "html": html, "merchant": merchant}),
            )
            .await;
        assert_eq!(reply.body["offers"][0]["listed"], true, "{:?}", reply.body);
    }
}

/// A token of alice's agent under an autopilot mandate of at most 200.00 USD an order,
/// blocking `categories`.
async fn agent_limited_to_200_usd(app: &TestApp, categories: &[&str]) -> String {
    let mandate = app
        .post(
            "/v1/mandates",
            &app.shopper("alice"),
            json!({"mode": "autopilot", "currency": "USD", "per_order_limit": {"minor": 20_000, "currency": "USD"},
                   "blocked_categories": categories}),
        )
        .await;
    let mandate = mandate.body["id"].as_str().expect("mandate");
    app.token("acme", "agent-1", Role::Agent, Some(mandate))
}

/// Searches until the index holds `total` matches (it trails the log by a moment).
async fn search_until(app: &TestApp, token: &str, query: &str, total: u64) -> common::Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = app.get(&format!("/v1/offers/search?{query}"), token).await;
        if reply.body["total"] == total || std::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn listed_offers_are_found_ranked_and_explained(backend: Backend) {
    let app = common::spawn_app(backend).await;
    list_offers(
        &app,
        &[
            ("acme", tent("199.00", "0", 2, 30)),
            ("bolt", tent("189.00", "25.00", 8, 14)),
            (
                "cole",
                product_page("Stovetop kettle", "45.00", "5.00", 2, 30, "Kitchen"),
            ),
        ],
    )
    .await;
    let alice = app.shopper("alice");
    let reply = search_until(&app, &alice, "q=tnet%20trail", 0).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    // "tnet" is four letters: no typo forgiven. "tents" is five: one is.
    let reply = search_until(&app, &alice, "q=tents", 2).await;
    assert_eq!(reply.body["total"], 2, "{:?}", reply.body);
    let results = reply.body["results"].as_array().expect("results");
    assert_eq!(
        results[0]["offer"]["merchant"], "acme",
        "cheaper delivered, sooner, longer returns"
    );
    assert_eq!(
        results[0]["landed_cost"],
        json!({"minor": 19_900, "currency": "USD"})
    );
    assert!(
        results[0]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("cheapest at 199.00 USD delivered"),
        "{}",
        results[0]["reason"]
    );
    assert_eq!(
        results[1]["landed_cost"],
        json!({"minor": 21_400, "currency": "USD"})
    );
    assert_eq!(
        results[0]["offer"]["citation_url"],
        "https://acme.example/p"
    );
    let breakdown = &results[0]["breakdown"];
    let sum: f64 = ["cost", "delivery", "returns", "trust"]
        .iter()
        .map(|k| breakdown[k].as_f64().expect("number"))
        .sum();
    assert!((sum - results[0]["score"].as_f64().expect("score")).abs() < 1e-9);
    assert_eq!(
        reply.body["facets"]["merchant"].as_array().map(Vec::len),
        Some(2)
    );

    // Filters: a category and what lies beneath; a delivered price range.
    let kitchen = search_until(&app, &alice, "category=home", 1).await;
    assert_eq!(kitchen.body["results"][0]["offer"]["merchant"], "cole");
    let cheap = search_until(&app, &alice, "currency=USD&max_price=20000", 2).await;
    let merchants: Vec<&str> = cheap.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["offer"]["merchant"].as_str())
        .collect();
    assert!(
        merchants.contains(&"acme") && merchants.contains(&"cole"),
        "{merchants:?}"
    );

    // Pages follow the cursor.
    let first = search_until(&app, &alice, "limit=2", 3).await;
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let second = app
        .get(
            &format!("/v1/offers/search?limit=2&cursor={cursor}"),
            &alice,
        )
        .await;
    assert_eq!(second.body["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(second.body["next_cursor"], Value::Null);
    app.stop().await;
}

async fn the_mandate_excludes_with_why_and_hints_at_what_budget_unlocks(backend: Backend) {
    let app = common::spawn_app(backend).await;
    list_offers(
        &app,
        &[
            ("acme", tent("210.00", "0", 1, 30)),
            ("bolt", tent("189.00", "0", 9, 0)),
            (
                "cellar",
                product_page("Rioja 2019", "20.00", "0", 2, 30, "Wine"),
            ),
        ],
    )
    .await;
    let agent = agent_limited_to_200_usd(&app, &["alcohol"]).await;
    let reply = search_until(&app, &agent, "", 3).await;
    assert_eq!(reply.body["total"], 3, "{:?}", reply.body);
    let ranked: Vec<&str> = reply.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["offer"]["merchant"].as_str())
        .collect();
    assert_eq!(ranked, ["bolt"]);
    let excluded = reply.body["excluded"].as_array().expect("excluded");
    let why = |merchant: &str| {
        excluded
            .iter()
            .find(|e| e["offer"]["merchant"] == merchant)
            .map(|e| (e["codes"].clone(), e["reason"].clone()))
    };
    assert_eq!(
        why("cellar"),
        Some((
            json!(["category_blocked"]),
            json!("the mandate blocks alcohol")
        ))
    );
    assert_eq!(
        why("acme"),
        Some((
            json!(["over_per_order_limit"]),
            json!("210.00 USD is over the per-order limit of 200.00 USD")
        ))
    );
    assert_eq!(
        reply.body["hints"][0]["text"],
        "raising the budget by 10.00 USD unlocks Trail 2 tent at acme, which would rank first"
    );
    app.stop().await;
}

async fn bad_searches_get_a_problem(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let alice = app.shopper("alice");
    for (query, status, code) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        (
            "limit=101",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "currency=XYZ",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "cursor=garbage",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        // A page that deep would have the index hold every match before it.
        (
            "cursor=o747511346380935",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "q=tent&cursor=o10000",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "w_cost=-1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "deliver_by=friday",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "mandate=nope",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        ("limit=ten", StatusCode::BAD_REQUEST, "invalid_query"),
        ("colour=red", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        app.get(&format!("/v1/offers/search?{query}"), &alice)
            .await
            .assert_problem(status, code);
    }
    // Someone else's mandate does not exist for the caller.
    let bob_mandate = app
        .post(
            "/v1/mandates",
            &app.shopper("bob"),
            json!({"mode": "assist", "currency": "USD"}),
        )
        .await;
    let bob_mandate = bob_mandate.body["id"].as_str().expect("mandate");
    app.get(&format!("/v1/offers/search?mandate={bob_mandate}"), &alice)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

async fn chosen_offers_are_compared_as_the_log_has_them(backend: Backend) {
    let app = common::spawn_app(backend).await;
    list_offers(
        &app,
        &[
            ("acme", tent("199.00", "0", 2, 30)),
            ("bolt", tent("179.00", "0", 2, 30)),
        ],
    )
    .await;
    let alice = app.shopper("alice");
    let compared = app
        .post(
            "/v1/offers/compare",
            &alice,
            json!({"offers": [{"merchant": "acme", "offer_id": offer_id("acme")}, {"merchant": "bolt", "offer_id": offer_id("bolt")}],
                   "weights": {"cost": 1.0, "delivery": 0.0, "returns": 0.0, "trust": 0.0}}),
        )
        .await;
    assert_eq!(compared.status, StatusCode::OK, "{:?}", compared.body);
    let results = compared.body["results"].as_array().expect("results");
    assert_eq!(results[0]["offer"]["merchant"], "bolt");
    assert_eq!(results[0]["score"], 100.0, "cost alone, and the cheapest");
    assert!(
        results[0]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("cheapest at 179.00 USD delivered")
    );

    for (body, code) in [
        (
            json!({"offers": [{"merchant": "acme", "offer_id": offer_id("acme")}]}),
            "invalid_field",
        ),
        (
            json!({"offers": [{"merchant": "acme", "offer_id": offer_id("acme")}, {"merchant": "acme", "offer_id": "sku:nothing"}]}),
            "offer_not_listed",
        ),
        (
            json!({"offers": [{"merchant": "Acme", "offer_id": "x"}, {"merchant": "acme", "offer_id": "y"}]}),
            "invalid_field",
        ),
        (
            json!({"offers": [{"merchant": "acme", "offer_id": offer_id("acme")}, {"merchant": "bolt", "offer_id": offer_id("bolt")}], "weights": {"cost": -2.0}}),
            "invalid_field",
        ),
    ] {
        app.post("/v1/offers/compare", &alice, body)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    app.stop().await;
}

/// The id `extract` gives the offer of a page that names no SKU: from its address.
fn offer_id(merchant: &str) -> String {
    let url = format!("https://{merchant}.example/p");
    let digest = sha2::Sha256::digest(url.as_bytes());
    format!("url:{}/0", hex::encode(&digest[..12]))
}

async fn a_run_records_its_searches_and_comparisons_with_every_score(backend: Backend) {
    let app = common::spawn_app(backend).await;
    list_offers(
        &app,
        &[
            ("acme", tent("210.00", "0", 1, 30)),
            ("bolt", tent("189.00", "0", 9, 0)),
        ],
    )
    .await;
    let alice = app.shopper("alice");
    let agent = agent_limited_to_200_usd(&app, &[]).await;
    let run = app
        .post("/v1/runs", &agent, json!({"prompt": "a tent for two"}))
        .await;
    let run = format!("/v1/runs/{}", run.body["id"].as_str().expect("run"));
    search_until(&app, &agent, "q=tent", 2).await;

    let key = uuid::Uuid::new_v4().to_string();
    let searches = format!("{run}/searches");
    let search_body = json!({"q": "tent", "limit": 10});
    let search = || {
        app.send(
            reqwest::Method::POST,
            &searches,
            Some(&agent),
            Some(&key),
            Some(&search_body),
            None,
        )
    };
    let searched = search().await;
    assert_eq!(searched.status, StatusCode::OK, "{:?}", searched.body);
    let result = &searched.body["search"]["results"][0];
    assert_eq!(result["offer"]["merchant"], "bolt");
    let action_id = searched.body["action_id"].as_str().expect("action id");
    // A retry records nothing more.
    assert_eq!(search().await.body["action_id"], action_id);

    let compared = app
        .post(
            &format!("{run}/comparisons"),
            &agent,
            json!({"offers": [{"merchant": "acme", "offer_id": offer_id("acme")}, {"merchant": "bolt", "offer_id": offer_id("bolt")}]}),
        )
        .await;
    assert_eq!(compared.status, StatusCode::OK, "{:?}", compared.body);
    let compared_id = compared.body["action_id"].as_str().expect("action id");

    // Refused: nothing recorded.
    app.post(&format!("{run}/searches"), &agent, json!({"limit": 0}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    app.post(
        &format!("{run}/searches"),
        &agent,
        json!({"q": "tent", "sort": "price"}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    app.post(
        &format!("{run}/searches"),
        &app.shopper("bob"),
        json!({"q": "tent"}),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not_found");

    let ledger = app.get(&format!("{run}/ledger"), &alice).await;
    let actions: Vec<&Value> = ledger
        .body
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["entry_type"] == "RunActionRecorded")
        .map(|e| &e["entry"]["ActionRecorded"])
        .collect();
    assert_eq!(actions.len(), 2, "{:?}", ledger.body);
    let searched_entry = actions[0];
    assert_eq!(searched_entry["action_id"], action_id);
    let action = &searched_entry["action"];
    assert_eq!(action["kind"], "search");
    assert_eq!(action["citations"], json!(["https://bolt.example/p"]));
    let evidence = &action["evidence"];
    assert_eq!(evidence["query"], json!({"q": "tent", "limit": 10}));
    // The ledger keeps what the agent was shown: the same scores and reasons.
    assert_eq!(evidence["ranked"][0]["merchant"], "bolt");
    assert_eq!(evidence["ranked"][0]["score"], result["score"]);
    assert_eq!(evidence["ranked"][0]["reason"], result["reason"]);
    assert_eq!(evidence["ranked"][0]["landed_cost"], result["landed_cost"]);
    assert_eq!(evidence["excluded"][0]["merchant"], "acme");
    assert_eq!(
        evidence["excluded"][0]["reason"],
        "210.00 USD is over the per-order limit of 200.00 USD"
    );
    let ranked_entry = actions[1];
    assert_eq!(ranked_entry["action_id"], compared_id);
    assert_eq!(ranked_entry["action"]["kind"], "rank");
    assert_eq!(
        ranked_entry["action"]["evidence"]["query"]["offers"][1]["merchant"],
        "bolt"
    );
    assert_eq!(
        ranked_entry["action"]["evidence"]["query"].get("weights"),
        Some(&json!({})),
        "the options left out are not recorded"
    );
    assert_eq!(
        ranked_entry["action"]["evidence"]["ranked"][0]["score"],
        compared.body["comparison"]["results"][0]["score"]
    );
    app.stop().await;
}

async fn an_index_ahead_of_the_log_is_rebuilt_from_it(backend: Backend) {
    use shopagent_connectors::search::EmbeddedGenerations;
    use shopagent_domain::ports::OfferIndex;
    // An index kept from another log: its checkpoint is far past this log's head.
    let dir = tempfile::tempdir().expect("index directory");
    let (index, generations) = EmbeddedGenerations::open(dir.path()).expect("index");
    index
        .apply(vec![], vec![], Some("0:999999".into()))
        .await
        .expect("checkpoint");
    let app = common::spawn_app_with_server(backend, None, |server| {
        server.with_offer_index(std::sync::Arc::new(index), std::sync::Arc::new(generations))
    })
    .await;
    list_offers(&app, &[("acme", tent("199.00", "0", 2, 30))]).await;
    let found = search_until(&app, &app.shopper("alice"), "q=tent", 1).await;
    assert_eq!(found.body["total"], 1, "{:?}", found.body);
    app.stop().await;
}

async fn a_merchant_catalogue_feeds_and_searches_offers_into_the_log(backend: Backend) {
    let world = common::checkout::world(backend, FailureMode::None).await;
    let app = &world.app;
    world.merchant.stock("sku:bad id", "Misfiled Item", 100);
    let ops = app.token("acme", "ops", Role::Ops, None);
    let synced = app
        .post(
            "/v1/merchants/acme/catalogue/sync",
            &ops,
            json!({"page_size": 2}),
        )
        .await;
    assert_eq!(synced.status, StatusCode::OK, "{:?}", synced.body);
    assert_eq!(
        (
            &synced.body["pages"],
            &synced.body["items"],
            &synced.body["listed"],
            &synced.body["changed"]
        ),
        (&json!(3), &json!(6), &json!(5), &json!(5)),
        "{:?}",
        synced.body
    );
    let not_listed = &synced.body["not_listed"][0];
    assert_eq!(not_listed["offer_id"], "sku:bad id");
    assert!(
        not_listed["issues"]
            .as_array()
            .expect("issues")
            .iter()
            .any(|i| i["field"] == "offer_id"),
        "{not_listed:?}"
    );

    // Read again: the same offers, nothing changed.
    let again = app
        .post("/v1/merchants/acme/catalogue/sync", &ops, json!({}))
        .await;
    assert_eq!(
        (&again.body["listed"], &again.body["changed"]),
        (&json!(5), &json!(0))
    );

    // The merchant's search lists what it answers, with the item as citation.
    world.merchant.stock("sku:tarp", "Ultralight Tarp", 3_900);
    let alice = app.shopper("alice");
    let found = app
        .post(
            "/v1/merchants/acme/catalogue/search",
            &alice,
            json!({"q": "tarp"}),
        )
        .await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    let tarp = &found.body["offers"][0];
    assert_eq!(
        (&tarp["offer_id"], &tarp["listed"], &tarp["fields"]["price"]),
        (
            &json!("sku:tarp"),
            &json!(true),
            &json!({"minor": 3_900, "currency": "USD"})
        ),
        "{tarp:?}"
    );
    let missing: Vec<&str> = tarp["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .filter(|i| i["problem"] == "missing")
        .filter_map(|i| i["field"].as_str())
        .collect();
    assert!(
        missing.contains(&"shipping") && missing.contains(&"returns"),
        "the catalog does not say: {missing:?}"
    );
    // Listed offers are searched and ranked like any other.
    let searched = search_until(app, &alice, "q=tarp", 1).await;
    assert_eq!(
        searched.body["results"][0]["offer"]["citation_url"]
            .as_str()
            .map(|u| u.ends_with("/products/sku:tarp")),
        Some(true),
        "{:?}",
        searched.body
    );

    for (path, body, status, code) in [
        (
            "/v1/merchants/acme/catalogue/search",
            json!({"q": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "/v1/merchants/acme/catalogue/sync",
            json!({"page_size": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "/v1/merchants/nobody/catalogue/sync",
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        app.post(path, &ops, body)
            .await
            .assert_problem(status, code);
    }
    app.post(
        "/v1/merchants/acme/catalogue/sync",
        &app.token("acme", "audit", Role::Auditor, None),
        json!({}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    world.app.stop().await;
}

async fn the_first_page_is_the_best_of_all_matches_not_of_the_index_s_first(backend: Backend) {
    let app = common::spawn_app(backend).await;
    // The word weighs least in the long title: the index puts that offer last, though
    // it is the cheapest delivered, the soonest and the only one with free returns.
    list_offers(
        &app,
        &[
            (
                "acme",
                product_page("Tent", "300.00", "20.00", 9, 0, "Camping > Tents"),
            ),
            (
                "bolt",
                product_page("Tent", "320.00", "20.00", 9, 0, "Camping > Tents"),
            ),
            (
                "cole",
                product_page(
                    "Northwind Trail two person backpacking tent with rainfly and footprint",
                    "150.00",
                    "0",
                    2,
                    30,
                    "Camping > Tents",
                ),
            ),
        ],
    )
    .await;
    let alice = app.shopper("alice");
    let first = search_until(&app, &alice, "q=tent&limit=1", 3).await;
    assert_eq!(
        first.body["results"][0]["offer"]["merchant"], "cole",
        "{:?}",
        first.body
    );
    let mut seen = vec!["cole".to_owned()];
    let mut cursor = first.body["next_cursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let page = app
            .get(
                &format!("/v1/offers/search?q=tent&limit=1&cursor={next}"),
                &alice,
            )
            .await;
        seen.extend(
            page.body["results"]
                .as_array()
                .expect("results")
                .iter()
                .filter_map(|r| r["offer"]["merchant"].as_str().map(str::to_owned)),
        );
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["cole", "acme", "bolt"], "each once, best first");
    app.stop().await;
}

/// The search index's line in the ops listing.
async fn index_status(app: &TestApp, ops: &str) -> Value {
    let listing = app.get("/v1/ops/projections", ops).await;
    listing.body["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .find(|p| p["name"] == "search_index")
        .cloned()
        .expect("the search index is listed")
}

async fn the_index_is_rebuilt_beside_the_live_one_and_reported_to_ops(backend: Backend) {
    use shopagent_connectors::search::EmbeddedGenerations;
    let dir = tempfile::tempdir().expect("index directory");
    let (index, generations) = EmbeddedGenerations::open(dir.path()).expect("index");
    let app = common::spawn_app_with_server(backend, None, |server| {
        server.with_offer_index(std::sync::Arc::new(index), std::sync::Arc::new(generations))
    })
    .await;
    list_offers(
        &app,
        &[
            ("acme", tent("199.00", "0", 2, 30)),
            ("bolt", tent("189.00", "25.00", 8, 14)),
        ],
    )
    .await;
    let alice = app.shopper("alice");
    search_until(&app, &alice, "q=tent", 2).await;
    let ops = app.token("acme", "ops", Role::Ops, None);
    let status = index_status(&app, &ops).await;
    assert_eq!(
        (&status["kind"], &status["state"], &status["lag_events"]),
        (&json!("index"), &json!("running"), &json!(0)),
        "{status:?}"
    );
    assert_eq!(status["checkpoint_position"], status["head_position"]);
    let current = || std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT");
    assert_eq!(current().trim(), "g1");

    let started = app
        .post("/v1/ops/projections/search_index/rebuild", &ops, json!({}))
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{:?}", started.body);
    // Searches answer from the live generation throughout.
    let during = app.get("/v1/offers/search?q=tent", &alice).await;
    assert_eq!(during.body["total"], 2, "{:?}", during.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while current().trim() != "g2" || index_status(&app, &ops).await["state"] == "rebuilding" {
        assert!(std::time::Instant::now() < deadline, "the rebuild finishes");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !dir.path().join("g1").exists(),
        "the retired generation is removed"
    );
    // The new generation serves, and keeps up with the log.
    assert_eq!(
        app.get("/v1/offers/search?q=tent", &alice).await.body["total"],
        2
    );
    list_offers(&app, &[("cole", tent("149.00", "0", 3, 30))]).await;
    search_until(&app, &alice, "q=tent", 3).await;

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("shopagent_reader_lag_events{reader=\"search_index\",kind=\"index\"}")
            || metrics
                .contains("shopagent_reader_lag_events{kind=\"index\",reader=\"search_index\"}"),
        "{metrics}"
    );
    app.post("/v1/ops/projections/search_index/pause", &ops, json!({}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "not_pausable");
    app.post(
        "/v1/ops/projections/search_index/rebuild",
        &alice,
        json!({}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.stop().await;
}
