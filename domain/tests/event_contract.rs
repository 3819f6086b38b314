//! Events are a public contract: auditors, consumers and future versions of shopagent
//! read them. One example of every event, serialized; a change to any JSON shape fails
//! here and needs a new event version and an upcaster, not a silent edit.

use std::collections::BTreeSet;

use serde::Serialize;
use shopagent_domain::DomainEvent;
use shopagent_domain::address::{Address, AddressFields};
use shopagent_domain::cart::{CartEvent, CartLine, Quote, SubCart, SubCartDecision};
use shopagent_domain::ids::*;
use shopagent_domain::mandate::{
    BudgetPeriod, MandateEvent, MandateTerms, Mode, PeriodBudget, ReleaseReason,
};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::{CheckoutPath, FailureReason, OrderDraft, OrderEvent, OrderLine};
use shopagent_domain::payment::{CardDisplay, CardReference, DeclineReason, PaymentEvent};
use shopagent_domain::run::{
    Action, ActionKind, Citation, Digest, ExcludedEvidence, GuardrailOutcome, OfferEvidence,
    RankedEvidence, RunEvent,
};
use time::macros::{date, datetime};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").expect("USD"))
}

fn merchant() -> MerchantId {
    MerchantId::parse("acme").expect("merchant")
}

/// Each event as `{"type", "version", "payload"}`, as the log stores it.
fn contract<E: DomainEvent + Serialize>(events: &[E]) -> serde_json::Value {
    events
        .iter()
        .map(|e| serde_json::json!({"type": e.event_type(), "version": e.event_version(), "payload": e}))
        .collect()
}

const AT: time::OffsetDateTime = datetime!(2026-11-25 10:00 UTC);

#[test]
fn mandate_events() {
    let terms = MandateTerms {
        mode: Mode::Autopilot,
        currency: Currency::parse("USD").expect("USD"),
        period_budget: Some(PeriodBudget {
            period: BudgetPeriod::Week,
            limit: usd(50_000),
        }),
        per_order_limit: Some(usd(20_000)),
        allowed_merchants: BTreeSet::new(),
        blocked_merchants: [MerchantId::parse("shady").expect("m")].into(),
        blocked_categories: [Category::parse("alcohol").expect("c")].into(),
        approval_threshold: Some(usd(15_000)),
        price_drift_tolerance_bps: 300,
        expires_at: Some(datetime!(2027-01-01 0:00 UTC)),
    };
    insta::assert_json_snapshot!(contract(&[
        MandateEvent::MandateCreated {
            mandate_id: MandateId(id(1)),
            shopper: "alice".into(),
            terms,
            created_at: AT
        },
        MandateEvent::BudgetReserved {
            reservation_id: ReservationId(id(2)),
            merchant: merchant(),
            amount: usd(1_200),
            period_start: date!(2026 - 11 - 23),
            awaiting_approval: false
        },
        MandateEvent::ReservationApproved {
            reservation_id: ReservationId(id(2))
        },
        MandateEvent::ReservationReleased {
            reservation_id: ReservationId(id(2)),
            reason: ReleaseReason::CheckoutFailed
        },
        MandateEvent::SpendCommitted {
            reservation_id: ReservationId(id(2)),
            amount: usd(1_100),
            period_start: date!(2026 - 11 - 23)
        },
        MandateEvent::MandateRevoked {
            reason: "kill switch".into(),
            revoked_at: AT
        },
    ]));
}

#[test]
fn cart_events() {
    let line = CartLine {
        offer_id: OfferId::parse("sku:tent").expect("o"),
        merchant: merchant(),
        title: "Tent".into(),
        category: Category::parse("outdoor").expect("c"),
        unit_price: usd(10_000),
        quantity: 1,
        price_seen_at: AT,
    };
    let quote = Quote {
        items_total: usd(10_000),
        shipping: usd(500),
        tax: usd(800),
        delivery_estimate: Some(date!(2026 - 11 - 28)),
        expires_at: AT,
    };
    let address = Address::new(AddressFields {
        name: "Ada".into(),
        line1: "1 Main St".into(),
        line2: None,
        city: "Springfield".into(),
        region: None,
        postal_code: "62701".into(),
        country: "US".into(),
    })
    .expect("address");
    insta::assert_json_snapshot!(contract(&[
        CartEvent::CartCreated {
            cart_id: CartId(id(1)),
            shopper: "alice".into(),
            mandate_id: Some(MandateId(id(2))),
            currency: Currency::parse("USD").expect("USD"),
            created_at: AT
        },
        CartEvent::LineAdded {
            line_id: LineId(id(3)),
            line
        },
        CartEvent::LineQuantityChanged {
            line_id: LineId(id(3)),
            quantity: 2
        },
        CartEvent::LineRemoved {
            line_id: LineId(id(3))
        },
        CartEvent::ShippingAddressSet { address },
        CartEvent::QuoteRecorded {
            merchant: merchant(),
            quote: quote.clone()
        },
        CartEvent::QuoteInvalidated {
            merchant: merchant()
        },
        CartEvent::CheckoutStarted {
            sub_carts: vec![SubCart {
                merchant: merchant(),
                lines: vec![LineId(id(3))],
                categories: BTreeSet::new(),
                seen_total: usd(10_000),
                quote,
                grand_total: usd(11_300),
                decision: SubCartDecision::AwaitApproval { drift_bps: 350 }
            }],
            started_at: AT,
        },
    ]));
}

#[test]
fn order_events() {
    let draft = OrderDraft {
        cart_id: CartId(id(1)),
        shopper: "alice".into(),
        mandate_id: None,
        reservation_id: Some(ReservationId(id(2))),
        merchant: merchant(),
        lines: vec![OrderLine {
            offer_id: OfferId::parse("sku:tent").expect("o"),
            title: "Tent".into(),
            quantity: 1,
            unit_price: usd(10_000),
        }],
        total: usd(11_300),
        path: CheckoutPath::Api,
        path_reason: "merchant API healthy".into(),
    };
    insta::assert_json_snapshot!(contract(&[
        OrderEvent::OrderCreated {
            order_id: OrderId(id(4)),
            draft,
            created_at: AT
        },
        OrderEvent::OrderSubmitted { at: AT },
        OrderEvent::PlacementAttemptFailed {
            attempt: 1,
            detail: "merchant answered 503".into(),
            at: AT,
        },
        OrderEvent::OrderPlaced {
            merchant_reference: "A-1001".into(),
            at: AT
        },
        OrderEvent::OrderFailed {
            reason: FailureReason::InventoryChanged,
            detail: "sold out".into(),
            at: AT
        },
        OrderEvent::OrderConfirmed { at: AT },
        OrderEvent::OrderShipped {
            carrier: "ups".into(),
            tracking_number: "1Z999".into(),
            at: AT
        },
        OrderEvent::OrderOutForDelivery { at: AT },
        OrderEvent::OrderDelivered { at: AT },
        OrderEvent::DeliveryExceptionReported {
            detail: "nobody home".into(),
            at: AT
        },
        OrderEvent::OrderCancelled {
            reason: "changed mind".into(),
            at: AT
        },
        OrderEvent::ReturnRequested {
            return_id: ReturnId(id(5)),
            reason: "too small".into(),
            at: AT
        },
        OrderEvent::RmaIssued {
            return_id: ReturnId(id(5)),
            rma: "RMA-7".into(),
            at: AT
        },
        OrderEvent::ItemsReturned {
            return_id: ReturnId(id(5)),
            at: AT
        },
        OrderEvent::OrderRefunded {
            refund_id: RefundId(id(6)),
            return_id: Some(ReturnId(id(5))),
            amount: usd(11_300),
            fully_refunded: true,
            at: AT
        },
    ]));
}

#[test]
fn payment_events() {
    insta::assert_json_snapshot!(contract(&[
        PaymentEvent::CardRequested {
            payment_id: PaymentId(id(1)),
            order_id: OrderId(id(2)),
            shopper: "alice".into(),
            mandate_id: Some(MandateId(id(3))),
            merchant: merchant(),
            cap: usd(11_500),
            requested_at: AT
        },
        PaymentEvent::CardIssued {
            card: CardReference::parse("ic_1NvLgS2eZvKYlo2C").expect("ref"),
            display: Some(CardDisplay::parse("Visa", "4242").expect("display")),
            expires_at: AT,
            issued_at: AT
        },
        PaymentEvent::AuthorizationApproved {
            authorization_id: AuthorizationId(id(4)),
            amount: usd(11_300),
            at: AT
        },
        PaymentEvent::AuthorizationDeclined {
            authorization_id: AuthorizationId(id(5)),
            amount: usd(100),
            reason: DeclineReason::CardAlreadyUsed,
            at: AT
        },
        PaymentEvent::PaymentCaptured {
            authorization_id: AuthorizationId(id(4)),
            amount: usd(11_300),
            at: AT
        },
        PaymentEvent::PaymentRefunded {
            refund_id: RefundId(id(6)),
            amount: usd(1_000),
            at: AT
        },
        PaymentEvent::CardVoided {
            reason: "order failed".into(),
            at: AT
        },
    ]));
}

#[test]
fn run_events() {
    let action = Action {
        kind: ActionKind::Search,
        input_digest: Digest::parse(&"a".repeat(64)).expect("digest"),
        output_digest: Digest::parse(&"b".repeat(64)).expect("digest"),
        citations: vec![Citation::parse("https://acme.example/tents").expect("url")],
        latency_ms: 420,
        cost: Some(usd(3)),
        evidence: None,
    };
    let ranked = Action {
        kind: ActionKind::Rank,
        citations: vec![],
        cost: None,
        evidence: Some(Box::new(OfferEvidence {
            query: serde_json::json!({"offers": [{"merchant": "acme", "offer_id": "sku:tent"}]}),
            ranked: vec![RankedEvidence {
                merchant: MerchantId::parse("acme").expect("merchant"),
                offer_id: OfferId::parse("sku:tent").expect("offer"),
                version: 2,
                score: 87.5,
                landed_cost: usd(14_900),
                reason: "cheapest delivered; free 30-day returns".into(),
            }],
            excluded: vec![ExcludedEvidence {
                merchant: MerchantId::parse("bolt").expect("merchant"),
                offer_id: OfferId::parse("sku:tent").expect("offer"),
                version: 1,
                reason: "the mandate blocks this merchant".into(),
            }],
        })),
        ..action.clone()
    };
    insta::assert_json_snapshot!(contract(&[
        RunEvent::RunStarted {
            run_id: RunId(id(1)),
            shopper: "alice".into(),
            mandate_id: Some(MandateId(id(2))),
            mode: Mode::Autopilot,
            prompt: "a tent".into(),
            started_at: AT
        },
        RunEvent::ActionRecorded {
            action_id: ActionId(id(3)),
            action,
            at: AT
        },
        RunEvent::ActionRecorded {
            action_id: ActionId(id(9)),
            action: ranked,
            at: AT
        },
        RunEvent::GuardrailDecisionRecorded {
            rule: "per_order_limit".into(),
            outcome: GuardrailOutcome::Allowed,
            rationale: "within limit".into(),
            at: AT
        },
        RunEvent::ApprovalRequested {
            approval_id: ApprovalId(id(4)),
            subject: "buy tent".into(),
            amount: Some(usd(14_900)),
            expires_at: AT,
            at: AT
        },
        RunEvent::ApprovalGranted {
            approval_id: ApprovalId(id(4)),
            by: "alice".into(),
            at: AT
        },
        RunEvent::ApprovalDenied {
            approval_id: ApprovalId(id(4)),
            by: "alice".into(),
            reason: "too pricey".into(),
            at: AT
        },
        RunEvent::ApprovalExpired {
            approval_id: ApprovalId(id(4)),
            at: AT
        },
        RunEvent::RunCompleted {
            summary: "bought".into(),
            at: AT
        },
        RunEvent::RunFailed {
            reason: "merchant down".into(),
            at: AT
        },
        RunEvent::RunCancelled {
            reason: "stopped".into(),
            at: AT
        },
    ]));
}

#[test]
fn aggregate_state_serializes_for_snapshots() {
    use shopagent_domain::Aggregate;
    use shopagent_domain::mandate::{Mandate, MandateCommand};
    // A mandate with committed spend: its period-keyed map must be valid JSON.
    let mut mandate = Mandate::default();
    let created = MandateEvent::MandateCreated {
        mandate_id: MandateId(id(1)),
        shopper: "alice".into(),
        terms: MandateTerms {
            mode: Mode::Autopilot,
            currency: Currency::parse("USD").expect("USD"),
            period_budget: None,
            per_order_limit: None,
            allowed_merchants: BTreeSet::new(),
            blocked_merchants: BTreeSet::new(),
            blocked_categories: BTreeSet::new(),
            approval_threshold: None,
            price_drift_tolerance_bps: 0,
            expires_at: None,
        },
        created_at: AT,
    };
    mandate.apply(created);
    let reserve = MandateCommand::Reserve {
        reservation_id: ReservationId(id(2)),
        merchant: merchant(),
        categories: BTreeSet::new(),
        amount: usd(500),
        approval_required: false,
        at: AT,
    };
    for event in mandate.decide(reserve).expect("reserve") {
        mandate.apply(event);
    }
    let commit = MandateCommand::CommitSpend {
        reservation_id: ReservationId(id(2)),
        amount: usd(500),
    };
    for event in mandate.decide(commit).expect("commit") {
        mandate.apply(event);
    }
    let json = serde_json::to_value(&mandate).expect("state serializes");
    assert_eq!(json["spent"], serde_json::json!({"2026-11-25": 500}));
    let back: Mandate = serde_json::from_value(json).expect("state deserializes");
    assert_eq!(back, mandate);
}

#[test]
fn merchant_events() {
    use shopagent_domain::merchant::{Health, MerchantEvent, MerchantProfile, Protocol};
    let profile = MerchantProfile {
        name: "Acme Outdoor".into(),
        protocol: Some(Protocol::Ucp),
        api_endpoint: Some("https://acme.example/ucp".into()),
        deeplink_base: Some("https://acme.example/p/".into()),
        headless_domain: None,
        paths: [CheckoutPath::Api, CheckoutPath::Deeplink].into(),
        card_acceptor_ids: ["1234567890".to_owned()].into(),
    };
    insta::assert_json_snapshot!(contract(&[
        MerchantEvent::MerchantRegistered {
            merchant: merchant(),
            profile: profile.clone(),
            at: AT
        },
        MerchantEvent::MerchantProfileUpdated { profile, at: AT },
        MerchantEvent::MerchantHealthReported {
            health: Health::Down,
            reason: "circuit open".into(),
            at: AT
        },
        MerchantEvent::HeadlessAllowlistChanged {
            allowed: true,
            at: AT
        },
    ]));
}

#[test]
fn offer_events() {
    use shopagent_domain::offer::{
        Availability, Citation as OfferCitation, DeliveryEstimate, Gtin, OfferEvent, OfferSource,
        ProductKey, ProductRecord, ReturnPolicy, TrustSignals,
    };
    let offer_id = OfferId::parse("sku:tent").expect("offer id");
    let record = ProductRecord {
        title: "Trail 2 two-person tent".into(),
        brand: Some("Northwind".into()),
        gtin: Some(Gtin::parse("4006381333931").expect("gtin")),
        mpn: Some("NW-T2".into()),
        category: Category::parse("outdoor/camping").expect("category"),
        merchant_category: Some("Camping > Tents".into()),
        price: usd(19_900),
        shipping: Some(usd(0)),
        availability: Some(Availability::InStock),
        delivery: DeliveryEstimate::new(2, 4),
        returns: Some(ReturnPolicy {
            window_days: 30,
            free: true,
        }),
        trust: TrustSignals::new(4.6, 5.0, 1280),
    };
    let citation = OfferCitation {
        url: "https://acme.example/p/trail-2".into(),
        digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        retrieved_at: AT,
    };
    let product_key = ProductKey::of(&merchant(), &offer_id, &record);
    insta::assert_json_snapshot!(contract(&[
        OfferEvent::OfferListed {
            merchant: merchant(),
            offer_id,
            product_key: product_key.clone(),
            record: Box::new(record.clone()),
            citation: Some(citation),
            source: OfferSource::Page,
            at: AT,
        },
        OfferEvent::OfferUpdated {
            product_key,
            record: Box::new(record),
            citation: None,
            source: OfferSource::Feed,
            at: AT,
        },
        OfferEvent::OfferWithdrawn { at: AT },
    ]));
}

#[test]
fn a_version_1_action_is_read_as_one_without_evidence() {
    let stored = serde_json::json!({"ActionRecorded": {
        "action": {
            "citations": ["https://acme.example/tents"],
            "cost": null,
            "input_digest": "a".repeat(64),
            "kind": "search",
            "latency_ms": 420,
            "output_digest": "b".repeat(64)
        },
        "action_id": "00000000-0000-0000-0000-000000000003",
        "at": "2026-11-25T10:00:00Z"
    }});
    let RunEvent::ActionRecorded { action, .. } =
        serde_json::from_value::<RunEvent>(stored).expect("a version 1 event reads")
    else {
        panic!("not an action");
    };
    assert_eq!((action.kind, action.evidence), (ActionKind::Search, None));
}
