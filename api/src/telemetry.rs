//! Structured JSON logs on standard error; standard output is left to command output
//! (`projections status`, and later exports).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `filter` uses `tracing`'s EnvFilter syntax; an
/// invalid filter falls back to `info` rather than failing start-up.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
