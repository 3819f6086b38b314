//! `/v1/runs`: agent runs and their append-only action ledger.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cqrs_es::persist::PersistedEventRepository;
use futures::Stream;
use serde::{Deserialize, Serialize};
use shopagent_commands::bridge::Stream as EsStream;
use shopagent_domain::ids::{ActionId, ApprovalId, MandateId, RunId};
use shopagent_domain::mandate::Mode;
use shopagent_domain::run::{
    Action, ActionKind, AgentRun, Citation, Digest, GuardrailOutcome, RunCommand, RunStatus,
};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::mandates::{ModeBody, MoneyBody, load_terms as load_mandate_terms};
use super::{
    Body, IdPairPath, IdPath, Owner, created, invalid, metadata, new_id, stream_id, versioned,
};
use super::{Changer, Owned};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/runs", post(start))
        .route("/v1/runs/{id}", get(read))
        .route("/v1/runs/{id}/ledger", get(ledger))
        .route("/v1/runs/{id}/events", get(events))
        .route("/v1/runs/{id}/actions", post(record_action))
        .route("/v1/runs/{id}/guardrail-decisions", post(record_decision))
        .route("/v1/runs/{id}/approvals", post(request_approval))
        .route("/v1/runs/{id}/approvals/{approval_id}/grant", post(grant))
        .route("/v1/runs/{id}/approvals/{approval_id}/deny", post(deny))
        .route("/v1/runs/{id}/complete", post(complete))
        .route("/v1/runs/{id}/fail", post(fail))
        .route("/v1/runs/{id}/cancel", post(cancel))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    #[schema(schema_with = crate::openapi::fields::prompt)]
    pub prompt: String,
    /// For a shopper's own run; an agent's run takes its mandate's mode.
    pub mode: Option<ModeBody>,
    /// For a shopper's run under one of their mandates.
    pub mandate_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKindBody {
    Search,
    Extract,
    Normalize,
    Rank,
    AddToCart,
    ProposePurchase,
    Checkout,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordAction {
    pub kind: ActionKindBody,
    /// SHA-256 of the action's input, 64 lowercase hex digits.
    #[schema(schema_with = crate::openapi::fields::sha256_hex)]
    pub input_digest: String,
    #[schema(schema_with = crate::openapi::fields::sha256_hex)]
    pub output_digest: String,
    #[serde(default)]
    pub citations: Vec<String>,
    pub latency_ms: u64,
    pub cost: Option<MoneyBody>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeBody {
    Allowed,
    Blocked,
    NeedsApproval,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordDecision {
    #[schema(schema_with = crate::openapi::fields::text_200)]
    pub rule: String,
    pub outcome: OutcomeBody,
    #[schema(schema_with = crate::openapi::fields::text_2000)]
    pub rationale: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestApproval {
    #[schema(schema_with = crate::openapi::fields::text_500)]
    pub subject: String,
    pub amount: Option<MoneyBody>,
    /// Seconds until the request expires (1 to 604800).
    #[schema(minimum = 1, maximum = 604800)]
    pub expires_in_seconds: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Up to 500 characters when denying an approval, 2000 when ending a run.
    #[schema(schema_with = crate::openapi::fields::text_500)]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    #[schema(schema_with = crate::openapi::fields::text_2000)]
    pub summary: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub shopper: String,
    pub mandate_id: Option<String>,
    pub mode: ModeBody,
    pub version: i64,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub actions: usize,
    pub pending_approvals: Vec<String>,
    /// Id of the entry a POST created (an action or an approval request), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub sequence: i64,
    pub entry_type: String,
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
}

impl Owned for AgentRun {
    fn owner(&self) -> Option<Owner<'_>> {
        self.id.map(|_| Owner {
            shopper: &self.shopper,
            mandate: self.mandate_id,
        })
    }
}

fn view(run: &AgentRun, version: i64, created_id: Option<Uuid>) -> Result<RunView, Problem> {
    let (Some(id), Some(mode)) = (run.id, run.mode) else {
        return Err(Problem::not_found());
    };
    Ok(RunView {
        id: id.to_string(),
        shopper: run.shopper.clone(),
        mandate_id: run.mandate_id.map(|m| m.to_string()),
        mode: match mode {
            Mode::Assist => ModeBody::Assist,
            Mode::Autopilot => ModeBody::Autopilot,
        },
        version,
        status: match run.status {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
        .into(),
        actions: run.actions.len(),
        pending_approvals: run
            .pending_approvals
            .keys()
            .map(ToString::to_string)
            .collect(),
        created_id: created_id.map(|id| id.to_string()),
    })
}

async fn load_visible(
    app: &App,
    principal: &Principal,
    id: RunId,
) -> Result<(AgentRun, i64), Problem> {
    super::load_visible(&app.runs, principal, id).await
}

#[utoipa::path(operation_id = "runs_start", post, path = "/v1/runs", tag = "runs", request_body = StartRun, params(("Idempotency-Key" = String, Header)),
    responses((status = 201, description = "Created", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn start(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Body(body): Body<StartRun>,
) -> Result<Response, Problem> {
    let (shopper, mandate_id, mode) = match principal.role {
        Role::Agent => {
            let mandate_id = principal
                .mandate
                .ok_or_else(|| Problem::forbidden("agent tokens name a mandate"))?;
            if body.mandate_id.is_some_and(|m| MandateId(m) != mandate_id) {
                return Err(Problem::forbidden(
                    "an agent acts only under its own mandate",
                ));
            }
            let mandate = load_mandate_terms(&app, &principal, mandate_id).await?;
            let mode = mandate.terms.as_ref().map_or(Mode::Assist, |t| t.mode);
            (mandate.shopper, Some(mandate_id), mode)
        }
        Role::Shopper => {
            let mandate_id = match body.mandate_id {
                Some(m) => {
                    load_mandate_terms(&app, &principal, MandateId(m)).await?;
                    Some(MandateId(m))
                }
                None => None,
            };
            let mode = match body.mode {
                Some(ModeBody::Autopilot) => Mode::Autopilot,
                _ => Mode::Assist,
            };
            (principal.subject.clone(), mandate_id, mode)
        }
        _ => {
            return Err(Problem::forbidden(
                "runs are started by agents and shoppers",
            ));
        }
    };
    let id = RunId(new_id(&principal, &key));
    let stream = stream_id(&principal.tenant, id);
    let command = RunCommand::Start {
        run_id: id,
        shopper,
        mandate_id,
        mode,
        prompt: body.prompt,
        at: OffsetDateTime::now_utc(),
    };
    app.runs.expect_new(&stream);
    let (run, version) = app
        .runs
        .execute_and_load(&stream, command, metadata(&principal, &key), None)
        .await?;
    Ok(created(
        format!("/v1/runs/{id}"),
        version,
        &view(&run, version, None)?,
    ))
}

#[utoipa::path(operation_id = "runs_read", get, path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The resource after the request", body = RunView, headers(("ETag" = String))), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn read(
    State(app): State<App>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    let (run, version) = load_visible(&app, &principal, RunId(id)).await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&run, version, None)?,
    ))
}

async fn entries_after(app: &App, stream: &str, after: i64) -> Result<Vec<LedgerEntry>, Problem> {
    let events = app
        .store
        .get_last_events::<EsStream<AgentRun>>(stream, after.max(0) as usize)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "ledger read failed");
            Problem::store_unavailable()
        })?;
    Ok(events
        .into_iter()
        .map(|e| LedgerEntry {
            sequence: e.sequence as i64,
            entry_type: e.event_type,
            entry: e.payload,
        })
        .collect())
}

#[utoipa::path(operation_id = "runs_ledger", get, path = "/v1/runs/{id}/ledger", tag = "runs", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The resource after the request", body = Vec<LedgerEntry>), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn ledger(
    State(app): State<App>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    load_visible(&app, &principal, RunId(id)).await?;
    let entries = entries_after(&app, &stream_id(&principal.tenant, RunId(id)), 0).await?;
    Ok(axum::Json(entries).into_response())
}

/// Server-sent events: each ledger entry as it is appended, read from the log (so
/// entries written by any instance arrive). `Last-Event-ID` resumes after an entry.
#[utoipa::path(operation_id = "runs_events", get, path = "/v1/runs/{id}/events", tag = "runs", params(("id" = String, Path, format = Uuid), ("Last-Event-ID" = Option<i64>, Header)),
    responses((status = 200, description = "The resource after the request", content_type = "text/event-stream", description = "One event per ledger entry; `id` is its sequence"), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn events(
    State(app): State<App>,
    principal: Principal,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    load_visible(&app, &principal, RunId(id)).await?;
    let stream = stream_id(&principal.tenant, RunId(id));
    let mut after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut appended = app.store.subscribe_appends();
    let events = async_stream::stream! {
        loop {
            let Ok(entries) = entries_after(&app, &stream, after).await else { break };
            let mut ended = false;
            for entry in entries {
                after = entry.sequence;
                ended |= matches!(entry.entry_type.as_str(), "RunCompleted" | "RunFailed" | "RunCancelled");
                let data = serde_json::to_string(&entry.entry).unwrap_or_default();
                yield Ok(Event::default().id(entry.sequence.to_string()).event(entry.entry_type).data(data));
            }
            if ended {
                break;
            }
            // Appends by this process wake us at once; the poll catches other instances.
            let _ = tokio::time::timeout(Duration::from_millis(500), appended.changed()).await;
        }
    };
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

async fn change(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    headers: &HeaderMap,
    id: RunId,
    changer: Changer,
    command: RunCommand,
) -> Result<(RunView, i64), Problem> {
    let (run, version) =
        super::change(&app.runs, principal, key, headers, id, changer, command).await?;
    Ok((view(&run, version, None)?, version))
}

/// The answer to a change, naming the entry it created, if any.
fn changed((mut view, version): (RunView, i64), created_id: Option<Uuid>) -> Response {
    view.created_id = created_id.map(|id| id.to_string());
    versioned(StatusCode::OK, version, &view)
}

#[utoipa::path(operation_id = "runs_record_action", post, path = "/v1/runs/{id}/actions", tag = "runs", request_body = RecordAction,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn record_action(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<RecordAction>,
) -> Result<Response, Problem> {
    let action = Action {
        kind: match body.kind {
            ActionKindBody::Search => ActionKind::Search,
            ActionKindBody::Extract => ActionKind::Extract,
            ActionKindBody::Normalize => ActionKind::Normalize,
            ActionKindBody::Rank => ActionKind::Rank,
            ActionKindBody::AddToCart => ActionKind::AddToCart,
            ActionKindBody::ProposePurchase => ActionKind::ProposePurchase,
            ActionKindBody::Checkout => ActionKind::Checkout,
        },
        input_digest: Digest::parse(&body.input_digest).map_err(|e| invalid("input_digest", e))?,
        output_digest: Digest::parse(&body.output_digest)
            .map_err(|e| invalid("output_digest", e))?,
        citations: body
            .citations
            .iter()
            .map(|c| Citation::parse(c).map_err(|e| invalid("citations", e)))
            .collect::<Result<_, _>>()?,
        latency_ms: body.latency_ms,
        cost: body.cost.map(|c| c.parse("cost")).transpose()?,
        evidence: None,
    };
    let action_id = ActionId(new_id(&principal, &key));
    let command = RunCommand::RecordAction {
        action_id,
        action,
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::OwnerOrAgent,
            command,
        )
        .await?,
        Some(action_id.0),
    ))
}

#[utoipa::path(operation_id = "runs_record_decision", post, path = "/v1/runs/{id}/guardrail-decisions", tag = "runs", request_body = RecordDecision,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn record_decision(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<RecordDecision>,
) -> Result<Response, Problem> {
    let outcome = match body.outcome {
        OutcomeBody::Allowed => GuardrailOutcome::Allowed,
        OutcomeBody::Blocked => GuardrailOutcome::Blocked,
        OutcomeBody::NeedsApproval => GuardrailOutcome::NeedsApproval,
    };
    let command = RunCommand::RecordGuardrailDecision {
        rule: body.rule,
        outcome,
        rationale: body.rationale,
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::OwnerOrAgent,
            command,
        )
        .await?,
        None,
    ))
}

#[utoipa::path(operation_id = "runs_request_approval", post, path = "/v1/runs/{id}/approvals", tag = "runs", request_body = RequestApproval,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn request_approval(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<RequestApproval>,
) -> Result<Response, Problem> {
    if !(1..=604_800).contains(&body.expires_in_seconds) {
        return Err(invalid("expires_in_seconds", "between 1 and 604800"));
    }
    let now = OffsetDateTime::now_utc();
    let approval_id = ApprovalId(new_id(&principal, &key));
    let command = RunCommand::RequestApproval {
        approval_id,
        subject: body.subject,
        amount: body.amount.map(|a| a.parse("amount")).transpose()?,
        expires_at: now + time::Duration::seconds(i64::from(body.expires_in_seconds)),
        at: now,
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::OwnerOrAgent,
            command,
        )
        .await?,
        Some(approval_id.0),
    ))
}

#[utoipa::path(operation_id = "runs_grant", post, path = "/v1/runs/{id}/approvals/{approval_id}/grant", tag = "runs",
    params(("id" = String, Path, format = Uuid), ("approval_id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn grant(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPairPath(id, approval): IdPairPath,
) -> Result<Response, Problem> {
    let command = RunCommand::GrantApproval {
        approval_id: ApprovalId(approval),
        by: principal.subject.clone(),
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::ShopperOrAdmin,
            command,
        )
        .await?,
        None,
    ))
}

#[utoipa::path(operation_id = "runs_deny", post, path = "/v1/runs/{id}/approvals/{approval_id}/deny", tag = "runs", request_body = Reason,
    params(("id" = String, Path, format = Uuid), ("approval_id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn deny(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPairPath(id, approval): IdPairPath,
    Body(body): Body<Reason>,
) -> Result<Response, Problem> {
    let command = RunCommand::DenyApproval {
        approval_id: ApprovalId(approval),
        by: principal.subject.clone(),
        reason: body.reason,
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::ShopperOrAdmin,
            command,
        )
        .await?,
        None,
    ))
}

#[utoipa::path(operation_id = "runs_complete", post, path = "/v1/runs/{id}/complete", tag = "runs", request_body = Summary,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn complete(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<Summary>,
) -> Result<Response, Problem> {
    let command = RunCommand::Complete {
        summary: body.summary,
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::OwnerOrAgent,
            command,
        )
        .await?,
        None,
    ))
}

#[utoipa::path(operation_id = "runs_fail", post, path = "/v1/runs/{id}/fail", tag = "runs", request_body = Reason,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn fail(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<Reason>,
) -> Result<Response, Problem> {
    let command = RunCommand::Fail {
        reason: body.reason,
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::OwnerOrAgent,
            command,
        )
        .await?,
        None,
    ))
}

#[utoipa::path(operation_id = "runs_cancel", post, path = "/v1/runs/{id}/cancel", tag = "runs", request_body = Reason,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = RunView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<Reason>,
) -> Result<Response, Problem> {
    let command = RunCommand::Cancel {
        reason: body.reason,
        at: OffsetDateTime::now_utc(),
    };
    Ok(changed(
        change(
            &app,
            &principal,
            &key,
            &headers,
            RunId(id),
            Changer::OwnerOrAgent,
            command,
        )
        .await?,
        None,
    ))
}
