//! What the API benches share: options from the environment and latency figures.

use std::time::Duration;

/// The environment variable `name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50, p95, p99 and max of the samples (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> [Duration; 4] {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    [at(0.50), at(0.95), at(0.99), at(1.0)]
}

/// Milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}
