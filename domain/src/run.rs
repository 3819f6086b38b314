//! AgentRun: the agent's append-only action ledger.
//!
//! Started with the prompt, mode and mandate; records each action with digests of its
//! inputs and outputs, citations, latency and cost (and, for the searches and rankings
//! the platform runs for the agent, the query and every offer returned with its score); every guardrail decision with its
//! rationale; approvals; the outcome. There is no command that edits or removes an
//! entry: the ledger only grows, and nothing is recorded after the run has ended.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ActionId, ApprovalId, MandateId, MerchantId, OfferId, RunId};
use crate::mandate::Mode;
use crate::money::Money;
use crate::{Aggregate, DomainEvent};

pub const MAX_PROMPT: usize = 10_000;
pub const MAX_CITATIONS: usize = 50;

/// A SHA-256 digest, 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a digest is 64 lowercase hexadecimal digits (SHA-256)")]
pub struct InvalidDigest;

impl Digest {
    pub fn parse(text: &str) -> Result<Self, InvalidDigest> {
        if text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidDigest)
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> Self {
        digest.0
    }
}

/// A source the agent relied on: an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Citation(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a citation is an absolute http or https URL of at most 2048 characters")]
pub struct InvalidCitation;

impl Citation {
    pub fn parse(text: &str) -> Result<Self, InvalidCitation> {
        let url = url::Url::parse(text).map_err(|_| InvalidCitation)?;
        if text.len() <= 2048 && matches!(url.scheme(), "http" | "https") && url.host().is_some() {
            Ok(Self(url.into()))
        } else {
            Err(InvalidCitation)
        }
    }
}

impl TryFrom<String> for Citation {
    type Error = InvalidCitation;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Citation> for String {
    fn from(citation: Citation) -> Self {
        citation.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Search,
    Extract,
    Normalize,
    Rank,
    AddToCart,
    ProposePurchase,
    Checkout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub kind: ActionKind,
    pub input_digest: Digest,
    pub output_digest: Digest,
    pub citations: Vec<Citation>,
    pub latency_ms: u64,
    pub cost: Option<Money>,
    /// For a search or rank action the platform ran: what was asked and what came back,
    /// scored. Absent from actions the agent reports itself, and from events written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Box<OfferEvidence>>,
}

/// Most offers one action's evidence keeps (a search page holds up to 100).
pub const MAX_EVIDENCE_OFFERS: usize = 100;

/// What a search or rank action was asked and what it returned, so an auditor can see
/// why the agent chose what it chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferEvidence {
    /// The request as the agent made it (the API's search or comparison body).
    pub query: serde_json::Value,
    /// The ranked offers, best first.
    pub ranked: Vec<RankedEvidence>,
    /// Offers left out, with why.
    pub excluded: Vec<ExcludedEvidence>,
}

/// One ranked offer, as the agent was shown it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedEvidence {
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    /// The offer's version ranked.
    pub version: i64,
    /// 0 to 100.
    pub score: f64,
    pub landed_cost: Money,
    pub reason: String,
}

/// One offer left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExcludedEvidence {
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    pub version: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailOutcome {
    Allowed,
    Blocked,
    NeedsApproval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Running,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunCommand {
    Start {
        run_id: RunId,
        shopper: String,
        mandate_id: Option<MandateId>,
        mode: Mode,
        prompt: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RecordAction {
        action_id: ActionId,
        action: Action,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RecordGuardrailDecision {
        rule: String,
        outcome: GuardrailOutcome,
        rationale: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RequestApproval {
        approval_id: ApprovalId,
        subject: String,
        amount: Option<Money>,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    GrantApproval {
        approval_id: ApprovalId,
        by: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    DenyApproval {
        approval_id: ApprovalId,
        by: String,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ExpireApproval {
        approval_id: ApprovalId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Complete {
        summary: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Fail {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Cancel {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    RunStarted {
        run_id: RunId,
        shopper: String,
        mandate_id: Option<MandateId>,
        mode: Mode,
        prompt: String,
        #[serde(with = "time::serde::rfc3339")]
        started_at: OffsetDateTime,
    },
    ActionRecorded {
        action_id: ActionId,
        action: Action,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    GuardrailDecisionRecorded {
        rule: String,
        outcome: GuardrailOutcome,
        rationale: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ApprovalRequested {
        approval_id: ApprovalId,
        subject: String,
        amount: Option<Money>,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ApprovalGranted {
        approval_id: ApprovalId,
        by: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ApprovalDenied {
        approval_id: ApprovalId,
        by: String,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ApprovalExpired {
        approval_id: ApprovalId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RunCompleted {
        summary: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RunFailed {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RunCancelled {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "RunStarted",
            Self::ActionRecorded { .. } => "RunActionRecorded",
            Self::GuardrailDecisionRecorded { .. } => "GuardrailDecisionRecorded",
            Self::ApprovalRequested { .. } => "ApprovalRequested",
            Self::ApprovalGranted { .. } => "ApprovalGranted",
            Self::ApprovalDenied { .. } => "ApprovalDenied",
            Self::ApprovalExpired { .. } => "ApprovalExpired",
            Self::RunCompleted { .. } => "RunCompleted",
            Self::RunFailed { .. } => "RunFailed",
            Self::RunCancelled { .. } => "RunCancelled",
        }
    }

    fn event_version(&self) -> &'static str {
        match self {
            // 2 added the action's `evidence`. A version 1 event is read as a version 2
            // one without evidence: the field's default is its upcast.
            Self::ActionRecorded { .. } => "2",
            _ => "1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("run does not exist")]
    NotFound,
    #[error("run already exists")]
    AlreadyExists,
    #[error("the run has ended; its ledger is closed")]
    Ended,
    #[error("invalid entry: {0}")]
    Invalid(String),
    #[error("action {0} is already recorded")]
    DuplicateAction(ActionId),
    #[error("an assist-mode run never checks out")]
    AssistModeNeverBuys,
    #[error("approval {0} already exists")]
    DuplicateApproval(ApprovalId),
    #[error("no pending approval {0}")]
    NoPendingApproval(ApprovalId),
    #[error("approval {0} has expired")]
    ApprovalExpired(ApprovalId),
    #[error("approval {0} has not expired yet")]
    ApprovalNotExpired(ApprovalId),
    #[error("approvals are still pending")]
    ApprovalsPending,
}

impl RunError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "run_not_found",
            Self::AlreadyExists => "run_exists",
            Self::Ended => "run_ended",
            Self::Invalid(_) => "invalid_run_entry",
            Self::DuplicateAction(_) => "duplicate_action",
            Self::AssistModeNeverBuys => "assist_mode_never_buys",
            Self::DuplicateApproval(_) => "duplicate_approval",
            Self::NoPendingApproval(_) => "no_pending_approval",
            Self::ApprovalExpired(_) => "approval_expired",
            Self::ApprovalNotExpired(_) => "approval_not_expired",
            Self::ApprovalsPending => "approvals_pending",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRun {
    pub id: Option<RunId>,
    pub shopper: String,
    pub mandate_id: Option<MandateId>,
    pub mode: Option<Mode>,
    pub status: RunStatus,
    pub actions: BTreeSet<ActionId>,
    /// Pending approvals and when they expire.
    pub pending_approvals: BTreeMap<ApprovalId, OffsetDateTime>,
    pub decided_approvals: BTreeSet<ApprovalId>,
    pub entries: u64,
}

fn text(field: &str, value: &str, max: usize) -> Result<(), RunError> {
    crate::text::check(field, value, max).map_err(RunError::Invalid)
}

impl AgentRun {
    fn running(&self) -> Result<Mode, RunError> {
        let mode = self.mode.ok_or(RunError::NotFound)?;
        if self.status != RunStatus::Running {
            return Err(RunError::Ended);
        }
        Ok(mode)
    }

    fn pending(&self, approval_id: ApprovalId) -> Result<OffsetDateTime, RunError> {
        self.pending_approvals
            .get(&approval_id)
            .copied()
            .ok_or(RunError::NoPendingApproval(approval_id))
    }
}

impl Aggregate for AgentRun {
    const TYPE: &'static str = "agent_run";
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;

    fn decide(&self, command: RunCommand) -> Result<Vec<RunEvent>, RunError> {
        use RunCommand as C;
        use RunEvent as E;
        let event = match command {
            C::Start {
                run_id,
                shopper,
                mandate_id,
                mode,
                prompt,
                at,
            } => {
                if self.mode.is_some() {
                    return Err(RunError::AlreadyExists);
                }
                text("prompt", &prompt, MAX_PROMPT)?;
                E::RunStarted {
                    run_id,
                    shopper,
                    mandate_id,
                    mode,
                    prompt,
                    started_at: at,
                }
            }
            C::RecordAction {
                action_id,
                action,
                at,
            } => {
                let mode = self.running()?;
                if self.actions.contains(&action_id) {
                    return Err(RunError::DuplicateAction(action_id));
                }
                if mode == Mode::Assist && action.kind == ActionKind::Checkout {
                    return Err(RunError::AssistModeNeverBuys);
                }
                if action.citations.len() > MAX_CITATIONS {
                    return Err(RunError::Invalid(format!(
                        "at most {MAX_CITATIONS} citations"
                    )));
                }
                if action.cost.is_some_and(Money::is_negative) {
                    return Err(RunError::Invalid("cost must not be negative".into()));
                }
                if let Some(evidence) = &action.evidence {
                    if !matches!(action.kind, ActionKind::Search | ActionKind::Rank) {
                        return Err(RunError::Invalid(
                            "only a search or rank action keeps offer evidence".into(),
                        ));
                    }
                    if evidence.ranked.len() + evidence.excluded.len() > MAX_EVIDENCE_OFFERS {
                        return Err(RunError::Invalid(format!(
                            "at most {MAX_EVIDENCE_OFFERS} offers of evidence"
                        )));
                    }
                }
                E::ActionRecorded {
                    action_id,
                    action,
                    at,
                }
            }
            C::RecordGuardrailDecision {
                rule,
                outcome,
                rationale,
                at,
            } => {
                self.running()?;
                text("rule", &rule, 200)?;
                text("rationale", &rationale, 2000)?;
                E::GuardrailDecisionRecorded {
                    rule,
                    outcome,
                    rationale,
                    at,
                }
            }
            C::RequestApproval {
                approval_id,
                subject,
                amount,
                expires_at,
                at,
            } => {
                self.running()?;
                if self.pending_approvals.contains_key(&approval_id)
                    || self.decided_approvals.contains(&approval_id)
                {
                    return Err(RunError::DuplicateApproval(approval_id));
                }
                text("subject", &subject, 500)?;
                if expires_at <= at {
                    return Err(RunError::Invalid(
                        "an approval expires in the future".into(),
                    ));
                }
                E::ApprovalRequested {
                    approval_id,
                    subject,
                    amount,
                    expires_at,
                    at,
                }
            }
            C::GrantApproval {
                approval_id,
                by,
                at,
            } => {
                self.running()?;
                if at >= self.pending(approval_id)? {
                    return Err(RunError::ApprovalExpired(approval_id));
                }
                text("by", &by, 200)?;
                E::ApprovalGranted {
                    approval_id,
                    by,
                    at,
                }
            }
            C::DenyApproval {
                approval_id,
                by,
                reason,
                at,
            } => {
                self.running()?;
                self.pending(approval_id)?;
                text("by", &by, 200)?;
                text("reason", &reason, 500)?;
                E::ApprovalDenied {
                    approval_id,
                    by,
                    reason,
                    at,
                }
            }
            C::ExpireApproval { approval_id, at } => {
                self.running()?;
                if at < self.pending(approval_id)? {
                    return Err(RunError::ApprovalNotExpired(approval_id));
                }
                E::ApprovalExpired { approval_id, at }
            }
            C::Complete { summary, at } => {
                self.running()?;
                if !self.pending_approvals.is_empty() {
                    return Err(RunError::ApprovalsPending);
                }
                text("summary", &summary, 2000)?;
                E::RunCompleted { summary, at }
            }
            C::Fail { reason, at } => {
                self.running()?;
                text("reason", &reason, 2000)?;
                E::RunFailed { reason, at }
            }
            C::Cancel { reason, at } => {
                self.running()?;
                text("reason", &reason, 2000)?;
                E::RunCancelled { reason, at }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: RunEvent) {
        use RunEvent as E;
        self.entries += 1;
        match event {
            E::RunStarted {
                run_id,
                shopper,
                mandate_id,
                mode,
                ..
            } => {
                self.id = Some(run_id);
                self.shopper = shopper;
                self.mandate_id = mandate_id;
                self.mode = Some(mode);
            }
            E::ActionRecorded { action_id, .. } => {
                self.actions.insert(action_id);
            }
            E::GuardrailDecisionRecorded { .. } => {}
            E::ApprovalRequested {
                approval_id,
                expires_at,
                ..
            } => {
                self.pending_approvals.insert(approval_id, expires_at);
            }
            E::ApprovalGranted { approval_id, .. }
            | E::ApprovalDenied { approval_id, .. }
            | E::ApprovalExpired { approval_id, .. } => {
                self.pending_approvals.remove(&approval_id);
                self.decided_approvals.insert(approval_id);
            }
            E::RunCompleted { .. } => self.status = RunStatus::Completed,
            E::RunFailed { .. } => self.status = RunStatus::Failed,
            E::RunCancelled { .. } => self.status = RunStatus::Cancelled,
        }
    }
}
