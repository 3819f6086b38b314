//! AgentRun rules, one test each.

use shopagent_domain::ids::{ActionId, ApprovalId, MerchantId, OfferId, RunId};
use shopagent_domain::mandate::Mode;
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::run::{
    Action, ActionKind, AgentRun, Citation, Digest, ExcludedEvidence, GuardrailOutcome,
    MAX_EVIDENCE_OFFERS, OfferEvidence, RankedEvidence, RunCommand as C, RunError, RunEvent as E,
};
use shopagent_domain::testing::AggregateTest;
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-25 10:00 UTC);
const EXPIRY: OffsetDateTime = datetime!(2026-11-25 11:00 UTC);

fn started(mode: Mode) -> E {
    E::RunStarted {
        run_id: RunId(uuid::Uuid::nil()),
        shopper: "shopper-1".into(),
        mandate_id: None,
        mode,
        prompt: "a 2-person tent under $150".into(),
        started_at: NOW,
    }
}

fn digest(c: char) -> Digest {
    Digest::parse(&c.to_string().repeat(64)).expect("digest")
}

fn action(kind: ActionKind) -> Action {
    Action {
        kind,
        input_digest: digest('a'),
        output_digest: digest('b'),
        citations: vec![Citation::parse("https://acme.example/p/tent-2p").expect("url")],
        latency_ms: 420,
        cost: Some(Money::new(3, Currency::parse("USD").expect("USD"))),
        evidence: None,
    }
}

fn evidence(ranked: usize) -> OfferEvidence {
    let usd = Currency::parse("USD").expect("USD");
    OfferEvidence {
        query: serde_json::json!({"q": "tent"}),
        ranked: (0..ranked)
            .map(|n| RankedEvidence {
                merchant: MerchantId::parse("acme").expect("merchant"),
                offer_id: OfferId::parse(&format!("sku:{n}")).expect("offer"),
                version: 1,
                score: 80.0,
                landed_cost: Money::new(14_900, usd),
                reason: "cheapest delivered".into(),
            })
            .collect(),
        excluded: vec![ExcludedEvidence {
            merchant: MerchantId::parse("bolt").expect("merchant"),
            offer_id: OfferId::parse("sku:tent").expect("offer"),
            version: 2,
            reason: "the mandate blocks this merchant".into(),
        }],
    }
}

fn aid(n: u128) -> ActionId {
    ActionId(uuid::Uuid::from_u128(n))
}

fn approval(n: u128) -> ApprovalId {
    ApprovalId(uuid::Uuid::from_u128(n))
}

fn requested(n: u128) -> E {
    E::ApprovalRequested {
        approval_id: approval(n),
        subject: "buy tent for $149".into(),
        amount: None,
        expires_at: EXPIRY,
        at: NOW,
    }
}

#[test]
fn an_action_is_recorded_with_digests_citations_latency_and_cost() {
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot)])
        .when(C::RecordAction {
            action_id: aid(1),
            action: action(ActionKind::Search),
            at: NOW,
        })
        .then_expect_events(vec![E::ActionRecorded {
            action_id: aid(1),
            action: action(ActionKind::Search),
            at: NOW,
        }]);
}

#[test]
fn an_action_is_recorded_once() {
    AggregateTest::<AgentRun>::given([
        started(Mode::Autopilot),
        E::ActionRecorded {
            action_id: aid(1),
            action: action(ActionKind::Search),
            at: NOW,
        },
    ])
    .when(C::RecordAction {
        action_id: aid(1),
        action: action(ActionKind::Rank),
        at: NOW,
    })
    .then_expect_error(RunError::DuplicateAction(aid(1)));
}

#[test]
fn an_assist_run_never_checks_out() {
    AggregateTest::<AgentRun>::given([started(Mode::Assist)])
        .when(C::RecordAction {
            action_id: aid(1),
            action: action(ActionKind::Checkout),
            at: NOW,
        })
        .then_expect_error(RunError::AssistModeNeverBuys);
}

#[test]
fn a_search_or_rank_action_keeps_the_query_and_every_offer_with_its_score() {
    let mut ranked = action(ActionKind::Rank);
    ranked.evidence = Some(Box::new(evidence(3)));
    AggregateTest::<AgentRun>::given(vec![started(Mode::Autopilot)])
        .when(C::RecordAction {
            action_id: aid(1),
            action: ranked.clone(),
            at: NOW,
        })
        .then_expect_events(vec![E::ActionRecorded {
            action_id: aid(1),
            action: ranked,
            at: NOW,
        }]);
}

#[test]
fn only_search_and_rank_actions_keep_offer_evidence() {
    let mut checkout = action(ActionKind::AddToCart);
    checkout.evidence = Some(Box::new(evidence(1)));
    AggregateTest::<AgentRun>::given(vec![started(Mode::Autopilot)])
        .when(C::RecordAction {
            action_id: aid(1),
            action: checkout,
            at: NOW,
        })
        .then_expect_error(RunError::Invalid(
            "only a search or rank action keeps offer evidence".into(),
        ));
}

#[test]
fn offer_evidence_is_bounded() {
    let mut search = action(ActionKind::Search);
    search.evidence = Some(Box::new(evidence(MAX_EVIDENCE_OFFERS)));
    AggregateTest::<AgentRun>::given(vec![started(Mode::Autopilot)])
        .when(C::RecordAction {
            action_id: aid(1),
            action: search,
            at: NOW,
        })
        .then_expect_error(RunError::Invalid(format!(
            "at most {MAX_EVIDENCE_OFFERS} offers of evidence"
        )));
}

#[test]
fn digests_are_sha256_hex_and_citations_are_http_urls() {
    assert!(Digest::parse(&"A".repeat(64)).is_err());
    assert!(Digest::parse("abc").is_err());
    assert!(Citation::parse("javascript:alert(1)").is_err());
    assert!(Citation::parse("/relative").is_err());
    assert!(Citation::parse("http://shop.example/x?y=1").is_ok());
}

#[test]
fn every_guardrail_decision_is_recorded_with_its_rationale() {
    let command = C::RecordGuardrailDecision {
        rule: "per_order_limit".into(),
        outcome: GuardrailOutcome::Blocked,
        rationale: "$210 exceeds the $200 per-order limit".into(),
        at: NOW,
    };
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot)])
        .when(command)
        .then_expect_events(vec![E::GuardrailDecisionRecorded {
            rule: "per_order_limit".into(),
            outcome: GuardrailOutcome::Blocked,
            rationale: "$210 exceeds the $200 per-order limit".into(),
            at: NOW,
        }]);
}

#[test]
fn a_guardrail_decision_needs_a_rationale() {
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot)])
        .when(C::RecordGuardrailDecision {
            rule: "r".into(),
            outcome: GuardrailOutcome::Allowed,
            rationale: " ".into(),
            at: NOW,
        })
        .then_expect_error(RunError::Invalid(
            "rationale must be 1 to 2000 characters".into(),
        ));
}

#[test]
fn a_pending_approval_is_granted_before_it_expires() {
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot), requested(1)])
        .when(C::GrantApproval {
            approval_id: approval(1),
            by: "shopper-1".into(),
            at: NOW,
        })
        .then_expect_events(vec![E::ApprovalGranted {
            approval_id: approval(1),
            by: "shopper-1".into(),
            at: NOW,
        }]);
}

#[test]
fn an_expired_approval_cannot_be_granted() {
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot), requested(1)])
        .when(C::GrantApproval {
            approval_id: approval(1),
            by: "shopper-1".into(),
            at: EXPIRY,
        })
        .then_expect_error(RunError::ApprovalExpired(approval(1)));
}

#[test]
fn an_approval_expires_only_after_its_deadline() {
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot), requested(1)])
        .when(C::ExpireApproval {
            approval_id: approval(1),
            at: NOW,
        })
        .then_expect_error(RunError::ApprovalNotExpired(approval(1)));
}

#[test]
fn an_approval_is_decided_once() {
    AggregateTest::<AgentRun>::given([
        started(Mode::Autopilot),
        requested(1),
        E::ApprovalDenied {
            approval_id: approval(1),
            by: "s".into(),
            reason: "too pricey".into(),
            at: NOW,
        },
    ])
    .when(C::GrantApproval {
        approval_id: approval(1),
        by: "s".into(),
        at: NOW,
    })
    .then_expect_error(RunError::NoPendingApproval(approval(1)));
}

#[test]
fn a_run_completes_only_without_pending_approvals() {
    AggregateTest::<AgentRun>::given([started(Mode::Autopilot), requested(1)])
        .when(C::Complete {
            summary: "bought".into(),
            at: NOW,
        })
        .then_expect_error(RunError::ApprovalsPending);
}

#[test]
fn nothing_is_recorded_after_the_run_ended() {
    for ended in [
        E::RunCompleted {
            summary: "done".into(),
            at: NOW,
        },
        E::RunFailed {
            reason: "merchant down".into(),
            at: NOW,
        },
        E::RunCancelled {
            reason: "shopper stopped it".into(),
            at: NOW,
        },
    ] {
        AggregateTest::<AgentRun>::given([started(Mode::Autopilot), ended])
            .when(C::RecordAction {
                action_id: aid(9),
                action: action(ActionKind::Search),
                at: NOW,
            })
            .then_expect_error(RunError::Ended);
    }
}

#[test]
fn a_run_is_started_once_with_a_prompt() {
    AggregateTest::<AgentRun>::given([started(Mode::Assist)])
        .when(C::Start {
            run_id: RunId::new(),
            shopper: "s".into(),
            mandate_id: None,
            mode: Mode::Assist,
            prompt: "x".into(),
            at: NOW,
        })
        .then_expect_error(RunError::AlreadyExists);
    AggregateTest::<AgentRun>::given_no_previous_events()
        .when(C::Start {
            run_id: RunId::new(),
            shopper: "s".into(),
            mandate_id: None,
            mode: Mode::Assist,
            prompt: String::new(),
            at: NOW,
        })
        .then_expect_error(RunError::Invalid(
            "prompt must be 1 to 10000 characters".into(),
        ));
}
