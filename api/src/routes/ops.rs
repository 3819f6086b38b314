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
use shopagent_projections::SearchIndexer;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/ops/projections", get(list))
        .route("/v1/ops/projections/{name}/pause", post(pause))
        .route("/v1/ops/projections/{name}/resume", post(resume))
        .route("/v1/ops/projections/{name}/rebuild", post(rebuild))
}

/// One reader of the log: a projection or a process manager.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionView {
    pub name: String,
    /// `projection` (a read model), `process` (side effects), `publisher` (the log
    /// to Kafka) or `index` (the offers search index, its checkpoint kept in the index).
    pub kind: &'static str,
    /// `running`; `paused` by ops; `failing` while a batch cannot be applied
    /// (retried; nothing is skipped); or `rebuilding` while a new version of its read
    /// model is built beside the live one.
    pub state: &'static str,
    pub checkpoint_position: i64,
    pub head_position: i64,
    /// Committed events not yet handled.
    pub lag_events: i64,
    /// How long the oldest of them has been waiting, in seconds.
    pub lag_seconds: f64,
    pub events_applied: i64,
    /// Events handled per second over its last few seconds of work.
    pub events_per_second: f64,
    pub updated_at: String,
    /// Why it is failing, while it is.
    pub error: Option<String>,
    /// The event it fails on, when one event is the cause.
    pub failed_position: Option<i64>,
    /// The rebuild under way, if any.
    pub rebuild: Option<RebuildView>,
}

/// How far a rebuild has come.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildView {
    /// Position the new version has reached (the head is `head_position`).
    pub position: i64,
    pub events_per_second: f64,
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
    let readers = readers(&app);
    let mut views = Vec::with_capacity(readers.len() + 1);
    for (name, kind) in readers {
        views.push(view(&app, name, kind).await?);
    }
    views.push(index_view(&app).await?);
    Ok(axum::Json(ProjectionList { projections: views }).into_response())
}

/// Where the offers search index stands. Its checkpoint is kept in the index, and its
/// activity is this instance's: each instance keeps its own embedded index.
async fn index_view(app: &App) -> Result<ProjectionView, Problem> {
    let status = app.search_indexer.status().await.map_err(index_problem)?;
    Ok(projection_view(status, "index"))
}

fn index_problem(error: shopagent_projections::search_index::IndexerError) -> Problem {
    match error {
        shopagent_projections::search_index::IndexerError::Store(store) => Problem::from(store),
        other => {
            tracing::error!(error = %other, "search index status failed");
            Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "search_unavailable",
                "The search index cannot answer right now",
            )
            .with_retry_after(5)
        }
    }
}

/// Starts a rebuild of the offers index into a new generation beside the live one.
fn rebuild_index(app: &App, principal: &Principal) -> Result<(), Problem> {
    use shopagent_projections::search_index::RebuildError;
    match app.search_indexer.claim_rebuild() {
        Ok(()) => {}
        Err(RebuildError::AlreadyRunning) => {
            return Err(Problem::new(
                axum::http::StatusCode::CONFLICT,
                "rebuild_in_progress",
                "A rebuild of this projection is already running",
            ));
        }
        Err(other) => {
            return Err(Problem::unprocessable("not_rebuildable", other.to_string()));
        }
    }
    let indexer = app.search_indexer.clone();
    let stop = app.background.stop.clone();
    app.background.tasks.spawn(async move {
        // The outcome is logged by the rebuild and visible in the status.
        let _ = indexer.rebuild_claimed(&stop).await;
    });
    tracing::info!(projection = SearchIndexer::NAME, by = %principal.subject, "search index rebuild started");
    Ok(())
}

/// Every reader of the log this server has, with its kind.
pub fn readers(app: &App) -> Vec<(&'static str, &'static str)> {
    projections()
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
        .chain(app.publishing.then_some((
            shopagent_commands::publisher::LogPublisher::NAME,
            "publisher",
        )))
        .collect()
}

/// Where one reader stands.
async fn view(app: &App, name: &str, kind: &'static str) -> Result<ProjectionView, Problem> {
    let status = shopagent_projections::status(&app.store, name)
        .await
        .map_err(status_problem)?;
    Ok(projection_view(status, kind))
}

fn projection_view(
    status: shopagent_projections::ProjectionStatus,
    kind: &'static str,
) -> ProjectionView {
    ProjectionView {
        name: status.name,
        kind,
        state: status.state,
        checkpoint_position: status.checkpoint_position,
        head_position: status.head_position,
        lag_events: status.lag_events,
        lag_seconds: status.lag_seconds,
        events_applied: status.events_applied,
        events_per_second: status.events_per_second,
        updated_at: status.updated_at,
        error: status.error,
        failed_position: status.failed_position,
        rebuild: status.rebuild.map(|r| RebuildView {
            position: r.position,
            events_per_second: r.events_per_second,
        }),
    }
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

/// The projection of this build named `name`, for ops and admins.
fn projection_for_ops(
    principal: &Principal,
    name: &str,
) -> Result<std::sync::Arc<dyn shopagent_projections::Projection>, Problem> {
    may_manage(principal)?;
    if name == SearchIndexer::NAME {
        return Err(Problem::unprocessable(
            "not_pausable",
            "each instance keeps the search index as the log grows; it is rebuilt, not paused",
        ));
    }
    projections()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| Problem::not_found().with_detail("no projection has this name"))
}

fn may_manage(principal: &Principal) -> Result<(), Problem> {
    if matches!(principal.role, Role::Ops | Role::Admin) {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "managing projections is for ops and admins",
        ))
    }
}

/// Pauses or resumes a projection of this build on every instance.
async fn set_paused(
    app: &App,
    principal: &Principal,
    name: &str,
    paused: bool,
) -> Result<Response, Problem> {
    let projection = projection_for_ops(principal, name)?;
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

/// Builds a new version of the projection's read model beside the live one, from the
/// start of the log, then switches readers to it and drops the old one. Answers at
/// once; the rebuild runs on this instance and shows in the projection's status.
/// Queries keep answering from the live version throughout.
#[utoipa::path(operation_id = "ops_rebuild_projection", post, path = "/v1/ops/projections/{name}/rebuild", tag = "ops",
    params(("name" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 202, description = "The rebuild started; follow it in the projection's status", body = ProjectionView),
        (status = 409, description = "A rebuild of this projection is already running", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn rebuild(
    State(app): State<App>,
    principal: Principal,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    if name == SearchIndexer::NAME {
        may_manage(&principal)?;
        rebuild_index(&app, &principal)?;
        return Ok(accepted(index_view(&app).await?));
    }
    let projection = projection_for_ops(&principal, &name)?;
    let name = projection.name();
    let rebuild = shopagent_projections::Rebuild::new(app.store.clone(), projection);
    match rebuild.claim().await {
        Ok(()) => {}
        Err(shopagent_projections::RebuildError::AlreadyRunning(_)) => {
            return Err(Problem::new(
                axum::http::StatusCode::CONFLICT,
                "rebuild_in_progress",
                "A rebuild of this projection is already running",
            ));
        }
        Err(shopagent_projections::RebuildError::Projection(error)) => {
            return Err(status_problem(error));
        }
        Err(other) => {
            tracing::error!(error = %other, "rebuild not started");
            return Err(Problem::internal());
        }
    }
    let stop = app.background.stop.clone();
    app.background.tasks.spawn(async move {
        // The outcome is logged by the rebuild and visible in the status.
        let _ = rebuild.run_claimed(&stop, |_| {}).await;
    });
    tracing::info!(projection = name, by = %principal.subject, "projection rebuild started");
    Ok(accepted(view(&app, name, "projection").await?))
}

/// 202, pointing at where the rebuild's progress shows.
fn accepted(view: ProjectionView) -> Response {
    let mut response = (axum::http::StatusCode::ACCEPTED, axum::Json(view)).into_response();
    response.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_static("/v1/ops/projections"),
    );
    response
}
