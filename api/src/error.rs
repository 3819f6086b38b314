//! How domain rejections and command failures become problem responses.

use axum::http::StatusCode;
use shopagent_commands::{CommandError, UnitError};
use shopagent_domain::cart::CartError;
use shopagent_domain::mandate::MandateError;
use shopagent_domain::merchant::MerchantError;
use shopagent_domain::offer::OfferError;
use shopagent_domain::order::OrderError;
use shopagent_domain::payment::PaymentError;
use shopagent_domain::run::RunError;

use crate::problem::Problem;

/// A domain rejection: its stable code and the HTTP status it maps to.
pub trait Rejection: std::error::Error {
    fn code(&self) -> &'static str;
    fn status(&self) -> StatusCode;
}

macro_rules! rejection {
    ($error:ty { not_found: $nf:pat, conflict: $conflict:pat }) => {
        impl Rejection for $error {
            fn code(&self) -> &'static str {
                <$error>::code(self)
            }
            fn status(&self) -> StatusCode {
                match self {
                    $nf => StatusCode::NOT_FOUND,
                    $conflict => StatusCode::CONFLICT,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                }
            }
        }
    };
}

rejection!(MandateError {
    not_found: MandateError::NotFound,
    conflict: MandateError::AlreadyExists | MandateError::Revoked
});
rejection!(CartError {
    not_found: CartError::NotFound,
    conflict: CartError::AlreadyExists | CartError::Locked
});
rejection!(RunError {
    not_found: RunError::NotFound,
    conflict: RunError::AlreadyExists | RunError::Ended
});
rejection!(OrderError {
    not_found: OrderError::NotFound,
    conflict: OrderError::AlreadyExists | OrderError::IllegalTransition { .. }
});
rejection!(MerchantError {
    not_found: MerchantError::NotFound,
    conflict: MerchantError::AlreadyExists
});
rejection!(PaymentError {
    not_found: PaymentError::NotFound,
    conflict: PaymentError::AlreadyExists
});
rejection!(OfferError {
    not_found: OfferError::NotListed,
    conflict: OfferError::OtherListing { .. } | OfferError::AlreadyWithdrawn
});

impl<E: Rejection> From<CommandError<E>> for Problem {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(rejection) => {
                let status = rejection.status();
                let title = match status {
                    StatusCode::NOT_FOUND => "No such resource",
                    StatusCode::CONFLICT => "The resource is not in a state that allows this",
                    _ => "The request breaks a rule",
                };
                Problem::new(status, rejection.code(), title).with_detail(rejection.to_string())
            }
            CommandError::IdempotencyKeyReused => Problem::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ),
            // The idempotency layer answers such a request from what its key holds.
            CommandError::RequestKeyTaken => Problem::request_in_progress(),
            CommandError::Conflict { .. } => concurrent_update(),
            CommandError::VersionMismatch { expected, actual } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                "The resource changed since it was read",
            )
            .with_detail(format!(
                "If-Match names version {expected}; the resource is at version {actual}"
            )),
            CommandError::Unavailable(error) => {
                tracing::warn!(%error, "store unavailable");
                Problem::store_unavailable()
            }
            CommandError::Internal(error) => {
                tracing::error!(%error, "command failed");
                Problem::internal()
            }
        }
    }
}

/// Concurrent writers kept winning the race: the caller may retry soon.
fn concurrent_update() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "concurrent_update",
        "The resource is being changed concurrently",
    )
    .with_detail("retry the request")
    .with_retry_after(1)
}

impl From<UnitError> for Problem {
    fn from(error: UnitError) -> Self {
        match error {
            UnitError::Conflict { .. } => concurrent_update(),
            UnitError::RequestKeyTaken => Problem::request_in_progress(),
            UnitError::Store(error) => error.into(),
            UnitError::Internal(error) => {
                tracing::error!(%error, "unit failed");
                Problem::internal()
            }
        }
    }
}

/// A read-model query failed: as the store failing.
impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Self {
        shopagent_commands::StoreError::from(error).into()
    }
}

/// Reading the store outside a command: down is 503 with `Retry-After`, anything else a
/// logged 500.
impl From<shopagent_commands::StoreError> for Problem {
    fn from(error: shopagent_commands::StoreError) -> Self {
        match error {
            shopagent_commands::StoreError::Unavailable(_) => Problem::store_unavailable(),
            other => {
                tracing::error!(error = %other, "store read failed");
                Problem::internal()
            }
        }
    }
}
