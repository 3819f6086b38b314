//! One error type for the HTTP interface, rendered as RFC 9457 `application/problem+json`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to a client. `code` is stable and machine-readable; `detail` is
/// for people and never carries personal data or secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Seconds after which a retry may succeed (also sent as `Retry-After`).
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self {
            problem_type: format!("urn:shopagent:problem:{code}"),
            title,
            status: status.as_u16(),
            code,
            detail: None,
            retry_after: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Tells the client to try again after `seconds` (`Retry-After`).
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "No such resource")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed on this resource",
        )
    }

    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "The event store is not available",
        )
        .with_retry_after(1)
    }

    /// The purchases already accepted wait `delay` behind the log, longer than `limit`:
    /// an autopilot checkout would wait longer still. Retry once the excess is worked
    /// off (at least a second, at most half a minute from now).
    pub fn purchases_behind(delay: Duration, limit: Duration) -> Self {
        let excess = delay.saturating_sub(limit).as_secs_f64().ceil();
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "purchases_behind",
            "Purchases are behind; checkouts that buy wait",
        )
        .with_detail(format!(
            "the purchases accepted wait {:.0} s to be carried out, over the limit of {} s",
            delay.as_secs_f64(),
            limit.as_secs()
        ))
        .with_retry_after(excess.clamp(1.0, 30.0) as u32)
    }

    /// Another request with the same `Idempotency-Key` still runs.
    pub fn request_in_progress() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "request_in_progress",
            "A request with this Idempotency-Key is still running",
        )
        .with_retry_after(1)
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request").with_detail(detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "The request breaks a rule",
        )
        .with_detail(detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
        )
        .with_detail(detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed for this role",
        )
        .with_detail(detail)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ProblemLogged(self.code));
        response
    }
}

/// Marks a response as a problem so the logging middleware can record its code.
#[derive(Debug, Clone, Copy)]
pub struct ProblemLogged(pub &'static str);
