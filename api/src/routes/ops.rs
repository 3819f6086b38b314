//! Ops: where every projection and process manager stands.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Principal, Role};
use crate::problem::Problem;
use crate::server::{App, projections};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/ops/projections", get(list))
        .route("/v1/ops/projections/{name}/pause", post(pause))
        .route("/v1/ops/projections/{name}/resume", post(resume))
}

/// One reader of the log: a projection or a process manager.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionView {
    pub name: String,
    /// `projection` (a read model) or `process` (side effects).
    pub kind: &'static str,
    /// `running`; `paused` by ops; or `failing` while a batch cannot be applied
    /// (retried; nothing is skipped).
    pub state: &'static str,
    pub checkpoint_position: i64,
    pub head_position: i64,
    /// Committed events not yet handled.
    pub lag_events: i64,
    /// How long the oldest of them has been waiting, in seconds.
    pub lag_seconds: f64,
    pub events_applied: i64,
    pub updated_at: String,
    /// Why it is failing, while it is.
    pub error: Option<String>,
    /// The event it fails on, when one event is the cause.
    pub failed_position: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionList {
    pub projections: Vec<ProjectionView>,
}

/// Every projection and process manager of this build, with its checkpoint, the log's
/// head, its lag and its state. For `ops` and `admin`.
#[utoipa::path(operation_id = "ops_projections", get, path = "/v1/ops/projections", tag = "ops",
    responses((status = 200, description = "Where each reader of the log stands", body = ProjectionList),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(State(app): State<App>, principal: Principal) -> Result<Response, Problem> {
    if !matches!(principal.role, Role::Ops | Role::Admin) {
        return Err(Problem::forbidden(
            "projection status is for ops and admins",
        ));
    }
    let readers = projections()
        .iter()
        .map(|p| (p.name(), "projection"))
        .chain([
            (
                shopagent_commands::checkout::CheckoutProcess::NAME,
                "process",
            ),
            (
                shopagent_commands::tracking::TrackingProcess::NAME,
                "process",
            ),
        ])
        .collect::<Vec<_>>();
    let mut views = Vec::with_capacity(readers.len());
    for (name, kind) in readers {
        views.push(view(&app, name, kind).await?);
    }
    Ok(axum::Json(ProjectionList { projections: views }).into_response())
}

/// Where one reader stands.
async fn view(app: &App, name: &str, kind: &'static str) -> Result<ProjectionView, Problem> {
    let status = shopagent_projections::status(&app.store, name)
        .await
        .map_err(status_problem)?;
    Ok(ProjectionView {
        name: status.name,
        kind,
        state: status.state,
        checkpoint_position: status.checkpoint_position,
        head_position: status.head_position,
        lag_events: status.lag_events,
        lag_seconds: status.lag_seconds,
        events_applied: status.events_applied,
        updated_at: status.updated_at,
        error: status.error,
        failed_position: status.failed_position,
    })
}

fn status_problem(error: shopagent_projections::ProjectionError) -> Problem {
    match error {
        shopagent_projections::ProjectionError::Store(store) => Problem::from(store),
        other => {
            tracing::error!(error = %other, "projection status failed");
            Problem::internal()
        }
    }
}

/// Pauses or resumes a projection of this build on every instance.
async fn set_paused(
    app: &App,
    principal: &Principal,
    name: &str,
    paused: bool,
) -> Result<Response, Problem> {
    if !matches!(principal.role, Role::Ops | Role::Admin) {
        return Err(Problem::forbidden(
            "pausing projections is for ops and admins",
        ));
    }
    let projection = projections()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| Problem::not_found().with_detail("no projection has this name"))?;
    shopagent_projections::set_paused(&app.store, projection.name(), paused)
        .await
        .map_err(status_problem)?;
    Ok(axum::Json(view(app, projection.name(), "projection").await?).into_response())
}

/// Stops applying events to the projection (on every instance) until it is resumed;
/// queries keep answering from what it holds.
#[utoipa::path(operation_id = "ops_pause_projection", post, path = "/v1/ops/projections/{name}/pause", tag = "ops",
    params(("name" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The projection, paused", body = ProjectionView),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn pause(
    State(app): State<App>,
    principal: Principal,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    set_paused(&app, &principal, &name, true).await
}

/// Resumes a paused projection from where it stopped.
#[utoipa::path(operation_id = "ops_resume_projection", post, path = "/v1/ops/projections/{name}/resume", tag = "ops",
    params(("name" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The projection, running again", body = ProjectionView),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn resume(
    State(app): State<App>,
    principal: Principal,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    set_paused(&app, &principal, &name, false).await
}
