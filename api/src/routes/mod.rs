//! The `/v1` API: commands as POSTs, current state as GETs.
//!
//! Conventions shared by every route live here: stream ids scoped by tenant, ids derived
//! from idempotency keys, `ETag`/`If-Match` carrying the aggregate version, JSON bodies
//! with unknown fields refused, and who may see and change what.

pub mod carts;
pub mod catalogue;
pub mod events;
pub mod mandates;
pub mod merchants;
pub mod offers;
pub mod ops;
pub mod orders;
pub mod reconciliation;
pub mod runs;
pub mod webhooks;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shopagent_commands::CommandBus;
use shopagent_domain::ids::MandateId;
use shopagent_domain::{Aggregate, EventMetadata};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::error::Rejection;
use crate::idempotency::RequestKey;
use crate::problem::Problem;

/// The POST routes whose only effects are the commands they run (appends to the log,
/// each under the request's key). Their requests take their key with their first append
/// instead of before they run ([`shopagent_commands::request_claim`]): run twice at
/// once, or run again after they answered, they store nothing the second time. Every
/// other POST takes its key before it runs: what it does outside the log (a merchant's
/// connector called, a projection paused or rebuilt) must never be done twice.
pub const COMMANDS_ONLY: &[&str] = &[
    "/v1/carts",
    "/v1/carts/{id}/lines",
    "/v1/carts/{id}/lines/{line_id}/quantity",
    "/v1/carts/{id}/lines/{line_id}/remove",
    "/v1/carts/{id}/address",
    "/v1/carts/{id}/quotes",
    "/v1/carts/{id}/checkout",
    "/v1/mandates",
    "/v1/mandates/{id}/revoke",
    "/v1/mandates/{id}/reservations/{reservation_id}/approve",
    "/v1/mandates/{id}/reservations/{reservation_id}/deny",
    "/v1/merchants",
    "/v1/merchants/{merchant}/profile",
    "/v1/merchants/{merchant}/health",
    "/v1/merchants/{merchant}/headless",
    "/v1/orders/{id}/cancel",
    "/v1/orders/{id}/returns",
    "/v1/runs",
    "/v1/runs/{id}/actions",
    "/v1/runs/{id}/guardrail-decisions",
    "/v1/runs/{id}/approvals",
    "/v1/runs/{id}/approvals/{approval_id}/grant",
    "/v1/runs/{id}/approvals/{approval_id}/deny",
    "/v1/runs/{id}/complete",
    "/v1/runs/{id}/fail",
    "/v1/runs/{id}/cancel",
];

/// Namespace of ids derived from idempotency keys.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_9d62_7a41_4b0e_9a57_2cf1_b0d3_e611);

/// Streams are scoped by tenant: another tenant's id names a different, empty stream.
pub fn stream_id(tenant: &str, id: impl std::fmt::Display) -> String {
    format!("{tenant}/{id}")
}

/// The id a create request makes: derived from its idempotency key, so that a retry
/// after a crash lands on the same aggregate.
pub fn new_id(principal: &Principal, key: &RequestKey) -> Uuid {
    Uuid::new_v5(
        &ID_NAMESPACE,
        format!("{}/{}/{}", principal.tenant, principal.subject, key.key).as_bytes(),
    )
}

pub fn metadata(principal: &Principal, key: &RequestKey) -> EventMetadata {
    let mut metadata = EventMetadata::new(
        principal.tenant.clone(),
        format!("{:?}:{}", principal.role, principal.subject).to_lowercase(),
    );
    metadata.idempotency_key = Some(key.key.clone());
    metadata.request_digest = Some(key.digest.clone());
    metadata.traceparent = key.traceparent.clone();
    metadata
}

/// A JSON response with the aggregate version as its `ETag`.
pub fn versioned<T: Serialize>(status: StatusCode, version: i64, body: &T) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(etag) = HeaderValue::try_from(format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// `201 Created` with the new resource, its version as `ETag` and its `Location`.
pub fn created<T: Serialize>(location: String, version: i64, body: &T) -> Response {
    let mut response = versioned(StatusCode::CREATED, version, body);
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The version named by `If-Match`, if any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid_if_match",
                "If-Match carries an ETag from a GET, e.g. \"3\"",
            )
        })
}

/// Who owns a resource: the shopper, and the mandate an agent may act under.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub shopper: &'a str,
    pub mandate: Option<MandateId>,
}

fn visible(principal: &Principal, owner: Owner<'_>) -> bool {
    match principal.role {
        Role::Shopper => owner.shopper == principal.subject,
        Role::Agent => owner.mandate.is_some() && owner.mandate == principal.mandate,
        Role::Finance | Role::Auditor | Role::Ops | Role::Admin => true,
    }
}

/// Another shopper's data does not exist for the caller: 404, not 403.
pub fn authorize_read(principal: &Principal, owner: Owner<'_>) -> Result<(), Problem> {
    if visible(principal, owner) {
        Ok(())
    } else {
        Err(Problem::not_found())
    }
}

/// Changes are for the owning shopper, the agent under its mandate, and admins.
pub fn authorize_write(principal: &Principal, owner: Owner<'_>) -> Result<(), Problem> {
    authorize_read(principal, owner)?;
    match principal.role {
        Role::Shopper | Role::Agent | Role::Admin => Ok(()),
        Role::Finance | Role::Auditor | Role::Ops => Err(Problem::forbidden(
            "this role reads but does not change shopper data",
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized("a bearer token is required"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestKey {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<RequestKey>()
            .cloned()
            .ok_or_else(|| {
                Problem::bad_request(
                    "idempotency_key_required",
                    "Idempotency-Key header is required on every POST",
                )
            })
    }
}

/// A JSON body. Malformed JSON, wrong types and unknown fields become 4xx problems that
/// name the offending field. A number with no fraction (`3.0`) is taken for an integer
/// field, as JSON Schema counts it an integer and some encoders write every number so.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;
    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if !json_content_type(request.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Request body too large",
            )
        })?;
        let decoded = match axum::Json::<T>::from_bytes(&bytes) {
            Err(JsonRejection::JsonDataError(_)) => match integral_numbers_as_integers(&bytes) {
                Some(integral) => axum::Json::<T>::from_bytes(&integral),
                None => axum::Json::<T>::from_bytes(&bytes),
            },
            decoded => decoded,
        };
        decoded
            .map(|axum::Json(value)| Self(value))
            .map_err(json_problem)
    }
}

/// `application/json`, or another JSON type (`application/merge-patch+json`).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(essence) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
    else {
        return false;
    };
    let essence = essence.trim().to_ascii_lowercase();
    essence == "application/json"
        || essence.starts_with("application/") && essence.ends_with("+json")
}

/// The body again with every number that has no fraction written as an integer, when
/// there is one; `None` when nothing changes.
fn integral_numbers_as_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    fn rewrite(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(number) => {
                let integral = number.as_f64().filter(|f| {
                    !number.is_i64() && !number.is_u64() && f.fract() == 0.0 && f.abs() < 9.0e15
                });
                match integral {
                    // Below 2^53 every integral f64 is exact as an i64.
                    Some(f) => {
                        *number = serde_json::Number::from(f as i64);
                        true
                    }
                    None => false,
                }
            }
            serde_json::Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| rewrite(item) | changed),
            serde_json::Value::Object(fields) => fields
                .values_mut()
                .fold(false, |changed, field| rewrite(field) | changed),
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    rewrite(&mut value)
        .then(|| serde_json::to_vec(&value).ok())
        .flatten()
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => Problem::bad_request("malformed_json", e.body_text()),
        JsonRejection::JsonDataError(e) => Problem::unprocessable("invalid_body", e.body_text()),
        other => Problem::bad_request("invalid_body", other.body_text()),
    }
}

/// A UUID path parameter; anything else is a 404 (no such resource can exist).
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_: PathRejection| Problem::not_found())?;
        Uuid::parse_str(&id)
            .map(Self)
            .map_err(|_| Problem::not_found().with_detail("ids are UUIDs"))
    }
}

/// Two UUID path parameters (a resource and one of its parts).
#[derive(Debug, Clone, Copy)]
pub struct IdPairPath(pub Uuid, pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPairPath {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path((a, b)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_: PathRejection| Problem::not_found())?;
        match (Uuid::parse_str(&a), Uuid::parse_str(&b)) {
            (Ok(a), Ok(b)) => Ok(Self(a, b)),
            _ => Err(Problem::not_found().with_detail("ids are UUIDs")),
        }
    }
}

/// An aggregate whose owner decides who may see and change it.
pub trait Owned: Aggregate {
    /// `None` until the aggregate exists.
    fn owner(&self) -> Option<Owner<'_>>;
}

/// Who, besides having write access, may issue a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changer {
    /// The owning shopper, the agent under its mandate, an admin.
    OwnerOrAgent,
    /// Decisions an agent must not take for itself: the shopper or an admin.
    ShopperOrAdmin,
}

/// Loads an aggregate the caller may see (404 otherwise).
pub async fn load_visible<A>(
    bus: &CommandBus<A>,
    principal: &Principal,
    id: impl std::fmt::Display,
) -> Result<(A, i64), Problem>
where
    A: Owned,
    A::Error: Rejection,
{
    let (aggregate, version) = bus.load(&stream_id(&principal.tenant, id)).await?;
    authorize_read(principal, aggregate.owner().ok_or_else(Problem::not_found)?)?;
    Ok((aggregate, version))
}

/// Loads an aggregate the caller may see (404 otherwise), for what it was made with and
/// never changes after: its owner and what it acts under (a cart's or a run's mandate,
/// a mandate's shopper and terms). A state this process keeps answers without a read
/// ([`CommandBus::load_settled`]); what changes later must come from [`load_visible`].
pub async fn load_visible_as_made<A>(
    bus: &CommandBus<A>,
    principal: &Principal,
    id: impl std::fmt::Display,
) -> Result<A, Problem>
where
    A: Owned,
    A::Error: Rejection,
{
    let (aggregate, _) = bus
        .load_settled(&stream_id(&principal.tenant, id), |kept| {
            kept.owner().is_some()
        })
        .await?;
    authorize_read(principal, aggregate.owner().ok_or_else(Problem::not_found)?)?;
    Ok(aggregate)
}

/// The shape of every change: the caller may change the aggregate, the command runs at
/// the `If-Match` version (if any), and the new state comes back with its version.
pub async fn change<A>(
    bus: &CommandBus<A>,
    principal: &Principal,
    key: &RequestKey,
    headers: &HeaderMap,
    id: impl std::fmt::Display,
    changer: Changer,
    command: A::Command,
) -> Result<(A, i64), Problem>
where
    A: Owned,
    A::Error: Rejection,
{
    let may_change = |aggregate: &A| {
        authorize_write(principal, aggregate.owner().ok_or_else(Problem::not_found)?)?;
        if changer == Changer::ShopperOrAdmin && principal.role == Role::Agent {
            return Err(Problem::forbidden(
                "only the shopper or an admin may do this",
            ));
        }
        Ok(())
    };
    // Checked on the state the command is decided on: one read for both.
    bus.execute_and_load_if(
        &stream_id(&principal.tenant, id),
        command,
        metadata(principal, key),
        if_match(headers)?,
        may_change,
    )
    .await?
}

/// Domain value parsing failures are the caller's fault: 422 with the reason.
/// Query parameters, or a 400 problem saying what is wrong with them.
pub fn query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Problem> {
    query
        .map(|axum::extract::Query(query)| query)
        .map_err(|e| Problem::bad_request("invalid_query", e.body_text()))
}

pub fn invalid(field: &str, error: impl std::fmt::Display) -> Problem {
    Problem::unprocessable("invalid_field", format!("{field}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::COMMANDS_ONLY;

    /// A route renamed must be renamed in the list too: under its old name its requests
    /// would quietly go back to claiming their key before they run.
    #[test]
    fn every_route_that_only_runs_commands_is_a_documented_post() {
        let document = crate::openapi::document();
        for path in COMMANDS_ONLY {
            let item = document.paths.paths.get(*path);
            assert!(
                item.is_some_and(|item| item.post.is_some()),
                "{path} is not a POST route"
            );
        }
    }
}
