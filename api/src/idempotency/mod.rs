//! `Idempotency-Key` on every POST: a retry with the same key and body gets the original
//! response (with `Idempotent-Replayed: true`); the same key with another body gets 422;
//! a retry while the first request still runs gets 409 with `Retry-After`. Responses are
//! kept for at least 24 hours, scoped to the caller's tenant.
//!
//! While a request runs, the request itself is kept beside its key. A request whose
//! process died (its lease ran out [`RESUME_AFTER`] ago, and no retry took it over) is
//! run again by the server as its caller ([`resume_interrupted`]), and its answer
//! stored for the caller's retry: a request is never left undone, nor its answer lost,
//! because its caller went away. (A request of several commands commits them as one
//! `Unit`, as checkout does, so none is ever half done.)
//!
//! A request takes its key before it runs, unless its route's only effects are its
//! commands ([`crate::routes::COMMANDS_ONLY`]): then its first append takes it, in the
//! same statement ([`Held::claiming_with_first_append`]), and the request waits for no
//! write of its record before it runs.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shopagent_commands::{ClaimOutcome, Database, RequestClaim, with_request_claim};
use shopagent_domain::IdempotencyKey;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::Principal;
use crate::problem::Problem;
use crate::server::App;

mod writer;

pub use writer::RecordWriter;
use writer::{Answer, WriteError};

/// Largest request body accepted on any POST.
pub const MAX_BODY: usize = 256 * 1024;
/// The largest body a POST to `path` may carry: a product page for the offer
/// extractor, [`MAX_BODY`] for everything else. Decided here because this layer reads
/// the body before the route (and its own limit) is reached.
fn body_limit(path: &str) -> usize {
    if path == crate::routes::offers::EXTRACT_PATH {
        crate::routes::offers::MAX_PAGE_BODY
    } else {
        MAX_BODY
    }
}

/// How long a first request may run before a retry may take its key over.
const LEASE: Duration = Duration::from_secs(30);
/// How long after its lease ran out an interrupted request is run again by the server
/// (when its caller has not retried it meanwhile).
pub const RESUME_AFTER: Duration = Duration::from_secs(300);
/// How long stored responses are kept.
pub const RETENTION: Duration = Duration::from_secs(48 * 3600);
/// Longest client key, leaving room for the suffixes derived per command.
pub const MAX_KEY: usize = 200;
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const STORED_HEADERS: [&str; 3] = ["content-type", "etag", "location"];

/// The request's idempotency key and body digest, for handlers to put in command
/// metadata: a retried request then lands on the command's recorded outcome even when
/// the server chose new timestamps.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub key: IdempotencyKey,
    pub digest: String,
    /// The caller's W3C `traceparent`, when it sent a valid one: stored with the events
    /// the request appends, so what follows from them continues its trace. Not part of
    /// the digest (a retry may come from another span).
    pub traceparent: Option<String>,
}

impl RequestKey {
    /// Key and digest for one of several commands a request issues.
    pub fn derived(&self, suffix: &str) -> Self {
        Self {
            key: IdempotencyKey::parse(&format!("{}/{suffix}", self.key.as_str()))
                .unwrap_or_else(|_| self.key.clone()),
            digest: format!("{}/{suffix}", self.digest),
            traceparent: self.traceparent.clone(),
        }
    }
}

/// A W3C trace context `traceparent` (version 00): `00-{trace id}-{parent id}-{flags}`,
/// lowercase hex, ids not all zeros. Anything else is ignored, as the spec asks.
pub fn valid_traceparent(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [version, trace, parent, flags]
            if *version == "00"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && parent.bytes().any(|b| b != b'0') =>
        {
            Some(value.trim().to_owned())
        }
        _ => None,
    }
}

/// A request the server runs again on its own, as `0`: its caller, authenticated when
/// the request first arrived.
#[derive(Debug, Clone)]
pub struct Resumed(pub Principal);

/// What is kept of a running request, besides its body, to run it again.
#[derive(Debug, Serialize, Deserialize)]
struct KeptRequest {
    method: String,
    /// Path and query.
    uri: String,
    content_type: Option<String>,
    traceparent: Option<String>,
    principal: Principal,
}

/// Identifies a request by what it asks: method, path and body.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method);
    hasher.update([0]);
    hasher.update(path);
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

enum Begin {
    Fresh,
    Replay(Response),
    InFlight,
    Mismatch,
}

impl Begin {
    /// The answer to a request its key does not let run; `None` when it may run.
    fn into_answer(self) -> Option<Response> {
        match self {
            Begin::Fresh => None,
            Begin::Replay(response) => Some(response),
            Begin::InFlight => Some(Problem::request_in_progress().into_response()),
            Begin::Mismatch => Some(
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request",
                )
                .into_response(),
            ),
        }
    }
}

/// Middleware for POST routes; runs after authentication.
pub async fn enforce(State(app): State<App>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return next.run(request).await;
    };
    let key = match request
        .headers()
        .get("idempotency-key")
        .map(HeaderValue::to_str)
    {
        None => {
            return Problem::bad_request(
                "idempotency_key_required",
                "Idempotency-Key header is required on every POST",
            )
            .into_response();
        }
        Some(Ok(raw)) if raw.len() <= MAX_KEY => match IdempotencyKey::parse(raw) {
            Ok(key) => key,
            Err(e) => {
                return Problem::bad_request("invalid_idempotency_key", e.to_string())
                    .into_response();
            }
        },
        Some(_) => {
            return Problem::bad_request(
                "invalid_idempotency_key",
                format!("an idempotency key is 1 to {MAX_KEY} visible ASCII characters"),
            )
            .into_response();
        }
    };

    let (parts, body) = request.into_parts();
    let limit = body_limit(parts.uri.path());
    let Ok(bytes) = to_bytes(body, limit).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Request body too large",
        )
        .with_detail(format!("at most {limit} bytes"))
        .into_response();
    };
    let hash = request_hash(parts.method.as_str(), parts.uri.path(), &bytes);
    let resumed = parts.extensions.get::<Resumed>().is_some();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let kept = KeptRequest {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        content_type: header("content-type"),
        traceparent: header("traceparent"),
        principal: principal.clone(),
    };
    let kept = serde_json::to_string(&kept).unwrap_or_default();

    let traceparent = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(valid_traceparent);
    let commands_only = parts
        .extensions
        .get::<MatchedPath>()
        .is_some_and(|path| crate::routes::COMMANDS_ONLY.contains(&path.as_str()));
    let mut request = Request::from_parts(parts, Body::from(bytes.clone()));
    request.extensions_mut().insert(RequestKey {
        key: key.clone(),
        digest: hash.clone(),
        traceparent,
    });
    let held = Held {
        app: &app,
        tenant: &principal.tenant,
        key: key.as_str(),
        hash: &hash,
        resumed,
    };
    if commands_only {
        if let Some(answer) = from_memory(&app.idempotency, held.tenant, held.key, &hash) {
            return answer;
        }
        let now = now_ms();
        let claim = RequestClaim {
            tenant: principal.tenant.clone(),
            key: key.as_str().to_owned(),
            request_hash: hash.clone(),
            lease_until_ms: now + LEASE.as_millis() as i64,
            created_at_ms: now,
            request: kept,
            request_body: bytes.clone(),
        };
        let again = copy(&request, bytes);
        return held
            .claiming_with_first_append(claim, (request, again), next)
            .await;
    }

    let started = begin(
        (&app.idempotency, app.store.derived()),
        held.tenant,
        held.key,
        &hash,
        (&kept, &bytes),
    );
    match started.await {
        Err(error) => {
            tracing::warn!(%error, "idempotency store unavailable");
            Problem::store_unavailable().into_response()
        }
        Ok(begun) => match begun.into_answer() {
            None => held.run(request, next).await,
            Some(answer) => answer,
        },
    }
}

/// A request holding (or about to hold) its key: what it needs to run and be answered.
struct Held<'a> {
    app: &'a App,
    tenant: &'a str,
    key: &'a str,
    hash: &'a str,
    /// Run again by the server ([`resume_interrupted`]), not by its caller.
    resumed: bool,
}

impl Held<'_> {
    /// Runs a request whose key it holds, and stores its answer.
    async fn run(&self, request: Request, next: Next) -> Response {
        let db = self.app.store.derived();
        let response = holding_lease(db, (self.tenant, self.key), LEASE / 3, next.run(request));
        self.store(response.await).await
    }

    /// Runs a request of a [`crate::routes::COMMANDS_ONLY`] route, its key taken by its
    /// first append rather than before it runs (a round trip saved). The request ends
    /// in one of three ways:
    /// - an append of its wrote the claim: it held its key, its answer is stored;
    /// - none did, the request appended nothing: its answer is stored now unless the
    ///   key holds something already, which is then the answer;
    /// - an append found the key held: nothing of it was stored, and the answer is
    ///   what the key holds.
    ///
    /// A key held by a request whose process died (its lease ran out) is taken over;
    /// one found held by an append is then run again, holding its key.
    async fn claiming_with_first_append(
        &self,
        claim: RequestClaim,
        (request, again): (Request, Request),
        next: Next,
    ) -> Response {
        let db = self.app.store.derived();
        let running = holding_lease(
            db,
            (self.tenant, self.key),
            LEASE / 3,
            next.clone().run(request),
        );
        let (response, claim) = with_request_claim(claim, running).await;
        let ours = match claim {
            ClaimOutcome::Written => return self.store(response).await,
            // Nothing stored, nothing held: a retry runs it again.
            ClaimOutcome::Unused if response.status().is_server_error() => return response,
            ClaimOutcome::Unused => {
                let (parts, body) = response.into_parts();
                let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
                let answer = self.answer_of(&parts, &body);
                match store_if_free(db, &answer).await {
                    Ok(true) => return Response::from_parts(parts, Body::from(body)),
                    Ok(false) => Some(Response::from_parts(parts, Body::from(body))),
                    Err(error) => {
                        tracing::warn!(%error, "idempotency store unavailable");
                        return Problem::store_unavailable().into_response();
                    }
                }
            }
            ClaimOutcome::Refused => None,
        };
        let now = now_ms();
        let lease = now + LEASE.as_millis() as i64;
        match claimed_before(db, (self.tenant, self.key), self.hash, (now, lease)).await {
            Err(error) => {
                tracing::warn!(%error, "idempotency store unavailable");
                Problem::store_unavailable().into_response()
            }
            Ok(found) => match found.into_answer() {
                Some(answer) => answer,
                // Taken over from a request whose process died. An answer made without
                // appending holds: each command it ran was done before, or did nothing.
                None => match ours {
                    Some(response) => self.store(response).await,
                    None => self.run(again, next).await,
                },
            },
        }
    }

    /// Stores the answer of a request that held its key, behind the response. A server
    /// fault is not an outcome: the key is let go so that a retry runs again (a request
    /// the server itself runs again keeps it in flight, to be run once more later).
    async fn store(&self, response: Response) -> Response {
        if response.status().is_server_error() {
            if !self.resumed
                && let Err(error) = forget(self.app.store.derived(), self.tenant, self.key).await
            {
                tracing::warn!(%error, "could not release idempotency key");
            }
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
        // Written behind the response (see `writer`): a failed write is logged there.
        drop(self.app.idempotency.answer(self.answer_of(&parts, &body)));
        Response::from_parts(parts, Body::from(body))
    }

    fn answer_of(&self, parts: &axum::http::response::Parts, body: &Bytes) -> Answer {
        Answer {
            tenant: self.tenant.to_owned(),
            key: self.key.to_owned(),
            request_hash: self.hash.to_owned(),
            status: i32::from(parts.status.as_u16()),
            headers: stored_headers(&parts.headers),
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// The same request again (its body is `body`), to be run a second time.
fn copy(request: &Request, body: Bytes) -> Request {
    let mut again = Request::new(Body::from(body));
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    *again.extensions_mut() = request.extensions().clone();
    again
}

/// Runs `work`, a request that holds its key, renewing the key's lease `every` while it
/// runs: however long a request runs, no retry and no resumer takes it over meanwhile;
/// only a request whose process died lets its lease run out.
///
/// Each renewal is written by a task of its own, beside the request: `work` is polled
/// all along. (Written in its way, a renewal that waited for a connection the request
/// held would wait for good: the request could not go on to give it back.)
async fn holding_lease<T>(
    db: &Database,
    (tenant, key): (&str, &str),
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = renew.tick() => {
                tokio::spawn(renew_lease(db.clone(), tenant.to_owned(), key.to_owned()));
            }
        }
    }
}

/// Moves the lease of a request still in flight on (tenant, key) to [`LEASE`] from now.
/// A request answered or let go meanwhile is left as it is.
async fn renew_lease(db: Database, tenant: String, key: String) {
    const RENEW: &str = "UPDATE http_idempotency SET lease_until_ms = $3
         WHERE tenant = $1 AND idempotency_key = $2 AND state = 'in_flight'";
    let lease = now_ms() + LEASE.as_millis() as i64;
    let renewed = shopagent_commands::on_pool!(&db, pool => sqlx::query(RENEW)
        .bind(&tenant)
        .bind(&key)
        .bind(lease)
        .execute(pool)
        .await
        .map(drop));
    if let Err(error) = renewed {
        tracing::warn!(%error, "could not renew a running request's lease");
    }
}

fn stored_headers(headers: &HeaderMap) -> String {
    let pairs: Vec<(&str, &str)> = STORED_HEADERS
        .iter()
        .filter_map(|name| Some((*name, headers.get(*name)?.to_str().ok()?)))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_default()
}

fn replay(status: i32, headers: &str, body: String) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let pairs: Vec<(String, String)> = serde_json::from_str(headers).unwrap_or_default();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

type Row = (
    String,
    String,
    i64,
    Option<i32>,
    Option<String>,
    Option<String>,
);

/// What the answer handed to the writer and not yet written on (tenant, key) says of a
/// request asking `hash`.
fn known_unwritten(records: &RecordWriter, tenant: &str, key: &str, hash: &str) -> Option<Begin> {
    let answer = records.unwritten(tenant, key)?;
    Some(if answer.request_hash == hash {
        Begin::Replay(replay(answer.status, &answer.headers, answer.body.clone()))
    } else {
        Begin::Mismatch
    })
}

/// The answer to a request whose key's answer is still on its way to the database.
fn from_memory(records: &RecordWriter, tenant: &str, key: &str, hash: &str) -> Option<Response> {
    known_unwritten(records, tenant, key, hash).and_then(Begin::into_answer)
}

/// Stores `answer`, the answer of a request that appended nothing, unless its key holds
/// something already; true when stored. Awaited: a request run twice at once must not
/// answer both times.
async fn store_if_free(db: &Database, answer: &Answer) -> Result<bool, sqlx::Error> {
    const SQL: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash,
             state, lease_until_ms, created_at_ms, status, headers, body)
         VALUES ($1, $2, $3, 'done', 0, $4, $5, $6, $7)
         ON CONFLICT (tenant, idempotency_key) DO NOTHING";
    shopagent_commands::on_pool!(db, pool => sqlx::query(SQL)
        .bind(&answer.tenant)
        .bind(&answer.key)
        .bind(&answer.request_hash)
        .bind(now_ms())
        .bind(answer.status)
        .bind(&answer.headers)
        .bind(&answer.body)
        .execute(pool)
        .await
        .map(|done| done.rows_affected() == 1))
}

async fn begin(
    (records, db): (&RecordWriter, &Database),
    tenant: &str,
    key: &str,
    hash: &str,
    (request, body): (&str, &Bytes),
) -> Result<Begin, WriteError> {
    if let Some(known) = known_unwritten(records, tenant, key, hash) {
        return Ok(known);
    }
    let now = now_ms();
    let lease = now + LEASE.as_millis() as i64;
    let claim = RequestClaim {
        tenant: tenant.to_owned(),
        key: key.to_owned(),
        request_hash: hash.to_owned(),
        lease_until_ms: lease,
        created_at_ms: now,
        request: request.to_owned(),
        request_body: body.clone(),
    };
    if records.claim(claim).await? {
        return Ok(Begin::Fresh);
    }
    Ok(claimed_before(db, (tenant, key), hash, (now, lease)).await?)
}

/// What a request finds when its key was claimed before it: the stored answer, the
/// request still running, or one whose process died, whose lease it then takes over.
async fn claimed_before(
    db: &Database,
    (tenant, key): (&str, &str),
    hash: &str,
    (now, lease): (i64, i64),
) -> Result<Begin, sqlx::Error> {
    const SELECT: &str = "SELECT request_hash, state, lease_until_ms, status, headers, body
         FROM http_idempotency WHERE tenant = $1 AND idempotency_key = $2";
    const TAKE_OVER: &str = "UPDATE http_idempotency SET lease_until_ms = $3
         WHERE tenant = $1 AND idempotency_key = $2 AND state = 'in_flight' AND lease_until_ms = $4";
    macro_rules! run {
        ($pool:expr) => {{
            let row: Option<Row> = sqlx::query_as(SELECT)
                .bind(tenant)
                .bind(key)
                .fetch_optional($pool)
                .await?;
            let Some((stored_hash, state, lease_until, status, headers, body)) = row else {
                // Purged between the two statements: treat as new next time.
                return Ok(Begin::InFlight);
            };
            if stored_hash != hash {
                return Ok(Begin::Mismatch);
            }
            if state == "done" {
                return Ok(Begin::Replay(replay(
                    status.unwrap_or(200),
                    &headers.unwrap_or_default(),
                    body.unwrap_or_default(),
                )));
            }
            if lease_until > now {
                return Ok(Begin::InFlight);
            }
            // The first attempt's process died: take its lease over, once.
            let taken = sqlx::query(TAKE_OVER)
                .bind(tenant)
                .bind(key)
                .bind(lease)
                .bind(lease_until)
                .execute($pool)
                .await?;
            Ok(if taken.rows_affected() == 1 {
                Begin::Fresh
            } else {
                Begin::InFlight
            })
        }};
    }
    match db {
        Database::Postgres(pool) => run!(pool),
        Database::Sqlite(pool) => run!(pool),
    }
}

async fn forget(db: &Database, tenant: &str, key: &str) -> Result<(), sqlx::Error> {
    const SQL: &str = "DELETE FROM http_idempotency WHERE tenant = $1 AND idempotency_key = $2 AND state = 'in_flight'";
    shopagent_commands::on_pool!(db, pool => sqlx::query(SQL)
        .bind(tenant)
        .bind(key)
        .execute(pool)
        .await
        .map(drop))
}

/// Runs again, through `router`, each request interrupted [`RESUME_AFTER`] (`after`)
/// ago or longer, until `stop` fires: as its caller, under its key, so that the
/// idempotency layer takes its lease over (one instance wins it), every command it
/// already committed replays, and its answer is stored for the caller's retry.
pub async fn resume_interrupted(
    db: Database,
    router: Router,
    after: Duration,
    stop: CancellationToken,
) {
    let every = (after / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let interrupted = match interrupted(&db, after).await {
            Ok(interrupted) => interrupted,
            Err(error) => {
                tracing::warn!(%error, "cannot list interrupted requests");
                continue;
            }
        };
        for (tenant, key, kept, body) in interrupted {
            if stop.is_cancelled() {
                return;
            }
            resume(&db, &router, (&tenant, &key), &kept, body).await;
        }
    }
}

/// Up to 50 requests whose lease ran out `after` ago: (tenant, key, request, body).
async fn interrupted(
    db: &Database,
    after: Duration,
) -> Result<Vec<(String, String, String, Vec<u8>)>, sqlx::Error> {
    const SQL: &str = "SELECT tenant, idempotency_key, request, request_body FROM http_idempotency
         WHERE state = 'in_flight' AND lease_until_ms < $1 AND request IS NOT NULL
           AND request_body IS NOT NULL
         ORDER BY lease_until_ms LIMIT 50";
    let before = now_ms() - after.as_millis() as i64;
    shopagent_commands::on_pool!(db, pool => sqlx::query_as(SQL).bind(before).fetch_all(pool).await)
}

/// Runs one interrupted request again. One that cannot be read is left to its caller.
async fn resume(
    db: &Database,
    router: &Router,
    (tenant, key): (&str, &str),
    kept: &str,
    body: Vec<u8>,
) {
    let request = serde_json::from_str::<KeptRequest>(kept)
        .map_err(|error| error.to_string())
        .and_then(|kept| {
            let mut request = axum::http::Request::builder()
                .method(kept.method.as_str())
                .uri(&kept.uri)
                .header("idempotency-key", key);
            if let Some(content_type) = &kept.content_type {
                request = request.header("content-type", content_type);
            }
            if let Some(traceparent) = &kept.traceparent {
                request = request.header("traceparent", traceparent);
            }
            let mut request = request
                .body(Body::from(body))
                .map_err(|error| error.to_string())?;
            request.extensions_mut().insert(Resumed(kept.principal));
            Ok(request)
        });
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(tenant, %error, "an interrupted request cannot be read; left to its caller");
            const SQL: &str = "UPDATE http_idempotency SET request = NULL, request_body = NULL
                 WHERE tenant = $1 AND idempotency_key = $2";
            let dropped = shopagent_commands::on_pool!(db, pool => sqlx::query(SQL).bind(tenant).bind(key).execute(pool).await.map(drop));
            if let Err(error) = dropped {
                tracing::warn!(%error, "cannot drop an unreadable request");
            }
            return;
        }
    };
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let Ok(response) = router.clone().oneshot(request).await;
    tracing::info!(tenant, %method, %uri, status = response.status().as_u16(), "interrupted request run again by the server");
    metrics::counter!("shopagent_requests_resumed_total", "status" => response.status().as_u16().to_string())
        .increment(1);
}

/// Deletes stored responses older than [`RETENTION`]. Returns how many.
pub async fn purge(db: &Database) -> Result<u64, sqlx::Error> {
    const SQL: &str = "DELETE FROM http_idempotency WHERE created_at_ms < $1";
    let before = now_ms() - RETENTION.as_millis() as i64;
    shopagent_commands::on_pool!(db, pool => sqlx::query(SQL)
        .bind(before)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lease_of(db: &Database, key: &str) -> i64 {
        const SQL: &str = "SELECT lease_until_ms FROM http_idempotency WHERE idempotency_key = $1";
        shopagent_commands::on_pool!(db, pool => sqlx::query_scalar(SQL).bind(key).fetch_one(pool).await)
            .expect("lease")
    }

    #[tokio::test]
    async fn a_request_keeps_renewing_its_lease_while_it_runs() {
        let test = shopagent_commands::test_support::TestStore::sqlite().await;
        let db = test.store.derived();
        let records = RecordWriter::start(db.clone());
        let started = begin(
            (&records, db),
            "acme",
            "slow",
            "hash",
            ("{}", &Bytes::new()),
        )
        .await;
        assert!(matches!(started, Ok(Begin::Fresh)));
        let first = lease_of(db, "slow").await;
        // The request runs until its lease has moved on by a tenth of a second: renewed
        // after it had run that long, however slowly the machine gets there.
        let running = holding_lease(db, ("acme", "slow"), Duration::from_millis(20), async {
            while lease_of(db, "slow").await < first + 100 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            "done"
        });
        let answer = tokio::time::timeout(Duration::from_secs(60), running).await;
        assert_eq!(
            answer,
            Ok("done"),
            "the lease did not move on while the request ran"
        );
    }

    /// A renewal is written beside the request, never in its way: it may wait for a
    /// connection the request itself holds (here the pool's only one), and the request
    /// goes on meanwhile.
    #[tokio::test]
    async fn a_request_is_not_held_up_by_its_lease_renewal() {
        let test = shopagent_commands::test_support::TestStore::postgres().await;
        let url = test.config.database_url.as_deref().expect("url");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(300))
            .connect(url)
            .await
            .expect("a pool of one connection");
        let db = Database::Postgres(pool.clone());
        let records = RecordWriter::start(test.store.derived().clone());
        let started = begin(
            (&records, test.store.derived()),
            "acme",
            "held",
            "hash",
            ("{}", &Bytes::new()),
        )
        .await;
        assert!(matches!(started, Ok(Begin::Fresh)));
        let first = lease_of(&db, "held").await;

        let work = async {
            let connection = pool.acquire().await.expect("the only connection");
            // Across several renewals.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(connection);
            "done"
        };
        let renewing = holding_lease(&db, ("acme", "held"), Duration::from_millis(20), work);
        let done = tokio::time::timeout(Duration::from_secs(60), renewing).await;
        assert_eq!(
            done.ok(),
            Some("done"),
            "the request waited for its renewal"
        );

        // The renewals waited for the connection, and were written once it was free.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lease_of(&db, "held").await == first {
            assert!(
                std::time::Instant::now() < deadline,
                "the lease was never renewed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pool.close().await;
        test.cleanup().await;
    }

    /// The answer is written behind the response: a retry sent meanwhile gets it
    /// replayed all the same, and the key used for another request is still refused.
    #[tokio::test]
    async fn a_retry_before_the_answer_is_written_replays_it() {
        let test = shopagent_commands::test_support::TestStore::sqlite().await;
        let db = test.store.derived();
        let records = RecordWriter::start(db.clone());
        let request = ("{}", &Bytes::new());
        let first = begin((&records, db), "acme", "k", "hash", request).await;
        assert!(matches!(first, Ok(Begin::Fresh)));
        let written = records.answer(Answer {
            tenant: "acme".into(),
            key: "k".into(),
            request_hash: "hash".into(),
            status: 201,
            headers: r#"[["content-type","application/json"]]"#.into(),
            body: r#"{"id":1}"#.into(),
        });
        let Ok(Begin::Replay(replayed)) = begin((&records, db), "acme", "k", "hash", request).await
        else {
            panic!("the retry was not replayed");
        };
        assert_eq!(replayed.status(), StatusCode::CREATED);
        assert_eq!(replayed.headers()["content-type"], "application/json");
        assert_eq!(replayed.headers()[REPLAYED], "true");
        let body = to_bytes(replayed.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(&body[..], br#"{"id":1}"#);
        let other = begin((&records, db), "acme", "k", "other", request).await;
        assert!(matches!(other, Ok(Begin::Mismatch)));
        written.await.expect("written");
    }

    #[test]
    fn a_w3c_traceparent_is_kept_and_anything_else_ignored() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(good).as_deref(), Some(good));
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(valid_traceparent(bad), None, "{bad:?}");
        }
    }
}
