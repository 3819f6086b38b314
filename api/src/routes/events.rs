//! `GET /v1/events/export`: the tenant's log for auditors, as hash-chained NDJSON
//! (see `shopagent_commands::export`), streamed page by page in constant memory. The
//! same filters serve `shopagent export`.

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use shopagent_commands::export::{ExportFilter, Exporter, Redactor};
use time::OffsetDateTime;

use crate::auth::{Principal, Role};
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new().route("/v1/events/export", get(export))
}

fn rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

/// Which events an export holds; every field narrows it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams, clap::Args)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// First global position (inclusive).
    #[arg(long)]
    pub from_position: Option<i64>,
    /// Last global position (inclusive).
    #[arg(long)]
    pub to_position: Option<i64>,
    /// Recorded at or after (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Recorded before (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// `mandate`, `cart`, `order`, `payment`, `run`, `merchant`.
    #[arg(long)]
    pub aggregate_type: Option<String>,
    /// A stream id, `<tenant>/<id>`.
    #[arg(long)]
    pub aggregate_id: Option<String>,
    /// Names, street addresses, cities, postcodes, emails and phone numbers replaced
    /// by stable pseudonyms.
    #[arg(long)]
    #[serde(default)]
    pub redact: bool,
}

impl ExportQuery {
    pub fn filter(&self, tenant: Option<String>) -> ExportFilter {
        ExportFilter {
            from_position: self.from_position,
            to_position: self.to_position,
            since: self.since,
            until: self.until,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            tenant,
        }
    }
}

/// The tenant's log as NDJSON: one event per line, each chained to the previous one by
/// `hash`, then a trailer with the head hash and the count. Check it with
/// `shopagent verify-export`.
#[utoipa::path(operation_id = "events_export", get, path = "/v1/events/export", tag = "events", params(ExportQuery),
    responses((status = 200, description = "Hash-chained NDJSON, a trailer last", content_type = "application/x-ndjson", body = String),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn export(
    State(app): State<App>,
    principal: Principal,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    if !matches!(principal.role, Role::Auditor | Role::Admin) {
        return Err(Problem::forbidden(
            "the log export is for auditors and admins",
        ));
    }
    let Query(query) = query.map_err(|e| Problem::bad_request("invalid_query", e.body_text()))?;
    let redactor = query.redact.then(|| Redactor::new(&app.pseudonym_key));
    let mut exporter = Exporter::start(
        app.store.clone(),
        query.filter(Some(principal.tenant.clone())),
        redactor,
    )
    .await?;
    let lines = async_stream::try_stream! {
        while let Some(page) = exporter.next_lines().await? {
            let mut chunk = String::new();
            for line in page {
                chunk.push_str(&line);
                chunk.push('\n');
            }
            yield chunk;
        }
    };
    let mut response = Body::from_stream::<_>(futures::StreamExt::map(
        lines,
        |r: Result<String, shopagent_commands::StoreError>| r.map_err(std::io::Error::other),
    ))
    .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}
