use shopagent_domain::ports::CallError;

/// An HTTP exchange with the issuer that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum IssuerHttpError {
    #[error("issuer unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("issuer answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("issuer sent an unexpected body: {0}")]
    Body(String),
}

impl From<IssuerHttpError> for CallError {
    fn from(error: IssuerHttpError) -> Self {
        match &error {
            // Timeouts, refused connections, rate limits and server faults pass.
            IssuerHttpError::Transport(_) => Self::Unavailable(error.to_string()),
            IssuerHttpError::Status { status, .. } if *status == 429 || *status >= 500 => {
                Self::Unavailable(error.to_string())
            }
            IssuerHttpError::Status { .. } | IssuerHttpError::Body(_) => {
                Self::Refused(error.to_string())
            }
        }
    }
}
