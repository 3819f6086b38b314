//! The auditor's export: round trip, every kind of tampering detected, filters, and
//! personal data redacted into stable pseudonyms.

use shopagent_commands::export::{ExportFilter, Exporter, Redactor, verify};
use shopagent_commands::test_support::TestStore;
use shopagent_commands::{CommandBus, Store};
use shopagent_domain::EventMetadata;
use shopagent_domain::address::{Address, AddressFields};
use shopagent_domain::cart::{Cart, CartCommand};
use shopagent_domain::ids::CartId;
use shopagent_domain::money::Currency;
use time::OffsetDateTime;

shopagent_commands::on_both_backends!(
    an_export_verifies_and_two_exports_of_a_range_are_identical,
    every_kind_of_tampering_is_detected_at_its_line,
    filters_choose_the_events_and_the_chain_covers_what_was_chosen,
    redacted_exports_hide_personal_data_behind_stable_pseudonyms,
);

/// Carts in two tenants, each with an address: two events per cart.
async fn carts(store: &Store, per_tenant: usize) -> Vec<String> {
    let bus = CommandBus::<Cart>::new(store.clone());
    let mut streams = Vec::new();
    for tenant in ["acme", "globex"] {
        for n in 0..per_tenant {
            let id = CartId::new();
            let stream = format!("{tenant}/{id}");
            let now = OffsetDateTime::now_utc();
            let create = CartCommand::Create {
                cart_id: id,
                shopper: format!("shopper-{n}"),
                mandate_id: None,
                currency: Currency::parse("USD").expect("USD"),
                at: now,
            };
            bus.execute(&stream, create, EventMetadata::new(tenant, "test"))
                .await
                .expect("cart");
            let address = Address::new(AddressFields {
                name: "Ada Lovelace".into(),
                line1: "12 Analytical Row".into(),
                line2: None,
                city: "London".into(),
                region: None,
                postal_code: "N1 9GU".into(),
                country: "GB".into(),
            })
            .expect("address");
            bus.execute(
                &stream,
                CartCommand::SetShippingAddress { address },
                EventMetadata::new(tenant, "test"),
            )
            .await
            .expect("address");
            streams.push(stream);
        }
    }
    streams
}

async fn export(store: &Store, filter: ExportFilter, redactor: Option<Redactor>) -> Vec<String> {
    let mut exporter = Exporter::start(store.clone(), filter, redactor)
        .await
        .expect("start");
    let mut lines = Vec::new();
    while let Some(page) = exporter.next_lines().await.expect("page") {
        lines.extend(page);
    }
    lines
}

fn verified(lines: &[String]) -> Result<u64, shopagent_commands::export::Broken> {
    verify(lines.iter().cloned().map(Ok::<_, std::convert::Infallible>)).map(|v| v.records)
}

async fn an_export_verifies_and_two_exports_of_a_range_are_identical(test: &TestStore) {
    carts(&test.store, 600).await; // 2400 events: several pages
    let lines = export(&test.store, ExportFilter::default(), None).await;
    assert_eq!(verified(&lines), Ok(2_400));
    let trailer: serde_json::Value =
        serde_json::from_str(lines.last().expect("trailer")).expect("json");
    assert_eq!(trailer["trailer"]["count"], 2_400);
    let again = export(&test.store, ExportFilter::default(), None).await;
    assert_eq!(lines, again, "the same log, the same bytes and hashes");
}

async fn every_kind_of_tampering_is_detected_at_its_line(test: &TestStore) {
    carts(&test.store, 5).await;
    let lines = export(&test.store, ExportFilter::default(), None).await;
    assert_eq!(verified(&lines), Ok(20));

    let mut changed = lines.clone();
    changed[3] = changed[3].replace("Ada Lovelace", "Eve");
    let broken = verified(&changed).expect_err("changed");
    assert_eq!(
        (broken.line, broken.why.as_str()),
        (4, "the record was changed")
    );

    let mut removed = lines.clone();
    removed.remove(5);
    assert_eq!(verified(&removed).expect_err("removed").line, 6);

    let mut inserted = lines.clone();
    inserted.insert(7, lines[2].clone());
    assert_eq!(verified(&inserted).expect_err("inserted").line, 8);

    let mut reordered = lines.clone();
    reordered.swap(9, 10);
    assert_eq!(verified(&reordered).expect_err("reordered").line, 10);

    let mut cut = lines.clone();
    cut.pop();
    let broken = verified(&cut).expect_err("no trailer");
    assert!(broken.why.contains("trailer is missing"), "{broken}");

    // Rewriting a record together with its own hash still breaks the next link.
    let mut rehashed = lines.clone();
    let mut record: serde_json::Value = serde_json::from_str(&rehashed[0]).expect("json");
    record["payload"] = serde_json::json!({"forged": true});
    rehashed[0] = record.to_string();
    assert_eq!(verified(&rehashed).expect_err("forged").line, 1);
}

async fn filters_choose_the_events_and_the_chain_covers_what_was_chosen(test: &TestStore) {
    let streams = carts(&test.store, 4).await;
    let by_tenant = export(
        &test.store,
        ExportFilter {
            tenant: Some("globex".into()),
            ..ExportFilter::default()
        },
        None,
    )
    .await;
    assert_eq!(verified(&by_tenant), Ok(8));
    assert!(
        by_tenant[..8]
            .iter()
            .all(|l| l.contains(r#""tenant":"globex""#))
    );

    let one = export(
        &test.store,
        ExportFilter {
            aggregate_id: Some(streams[0].clone()),
            ..ExportFilter::default()
        },
        None,
    )
    .await;
    assert_eq!(verified(&one), Ok(2));

    let first: serde_json::Value = serde_json::from_str(&by_tenant[0]).expect("json");
    let from = first["position"].as_i64().expect("position");
    let range = export(
        &test.store,
        ExportFilter {
            from_position: Some(from),
            to_position: Some(from + 2),
            ..ExportFilter::default()
        },
        None,
    )
    .await;
    assert_eq!(verified(&range), Ok(3));

    let none = export(
        &test.store,
        ExportFilter {
            aggregate_type: Some("order".into()),
            ..ExportFilter::default()
        },
        None,
    )
    .await;
    assert_eq!(verified(&none), Ok(0), "an empty export still verifies");

    // A time window: from one event's time (inclusive) to a later one's (exclusive),
    // as the database selects it, agrees with the records' own times.
    let all = export(&test.store, ExportFilter::default(), None).await;
    let times: Vec<OffsetDateTime> = all[..all.len() - 1]
        .iter()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("json");
            let at = record["recorded_at"].as_str().expect("recorded_at");
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).expect("time")
        })
        .collect();
    let (since, until) = (times[3], times[12]);
    let expected = times.iter().filter(|t| **t >= since && **t < until).count();
    let window = export(
        &test.store,
        ExportFilter {
            since: Some(since),
            until: Some(until),
            ..ExportFilter::default()
        },
        None,
    )
    .await;
    assert_eq!(verified(&window), Ok(expected as u64));
    assert!(expected >= 9, "{expected}");
}

async fn redacted_exports_hide_personal_data_behind_stable_pseudonyms(test: &TestStore) {
    carts(&test.store, 2).await;
    let redactor = || Some(Redactor::new(b"export-pseudonym-key"));
    let lines = export(&test.store, ExportFilter::default(), redactor()).await;
    assert_eq!(verified(&lines), Ok(8));
    let text = lines.join("\n");
    for personal in ["Ada Lovelace", "12 Analytical Row", "London", "N1 9GU"] {
        assert!(!text.contains(personal), "{personal} leaked");
    }
    assert!(text.contains("anon_"));
    assert!(
        text.contains(r#""country":"GB""#),
        "what is not personal stays"
    );
    assert_eq!(
        lines,
        export(&test.store, ExportFilter::default(), redactor()).await,
        "the same pseudonyms every time"
    );
    let other_key = export(
        &test.store,
        ExportFilter::default(),
        Some(Redactor::new(b"another key")),
    )
    .await;
    assert_ne!(lines, other_key, "pseudonyms depend on the key");
}
