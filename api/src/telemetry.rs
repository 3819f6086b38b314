//! Logs, traces and metrics.
//!
//! * Logs: JSON lines on standard error (standard output is left to command output),
//!   each carrying the trace and span id of the span it was written in.
//! * Traces: OpenTelemetry spans for HTTP requests, commands, appends, projection
//!   batches, process-manager steps, connector calls and Kafka publishes. They are
//!   always made — their ids go into the logs and into the metadata of appended events,
//!   which the readers of the log continue — and exported over OTLP/HTTP (protobuf)
//!   when an endpoint is configured. Without one, a trace this process starts is made
//!   unsampled (its spans keep their ids but record nothing, and say so to whoever
//!   continues them); a caller's sampled trace is still recorded.
//! * Metrics: a Prometheus recorder, rendered at `GET /metrics`.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// What to log and where spans go.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `tracing`'s EnvFilter syntax; an invalid filter falls back to `info`. Filters the
    /// logs only: spans are recorded at `info` whatever the log level.
    pub log_filter: String,
    /// The OTLP/HTTP traces URL (`…/v1/traces`). None: spans are made but not exported,
    /// and the traces this process starts are unsampled.
    pub traces_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    pub service_name: String,
}

impl TelemetryConfig {
    /// The standard OpenTelemetry environment: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as
    /// is, else `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended;
    /// `OTEL_TRACES_EXPORTER=none` turns export off; `OTEL_SERVICE_NAME` (default
    /// `shopagent`). Headers, timeout, sampler and batching are read by the SDK itself
    /// (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, …).
    pub fn from_env(log_filter: &str) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let traces_endpoint = if var("OTEL_TRACES_EXPORTER").as_deref() == Some("none") {
            None
        } else {
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
                var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
            })
        };
        Self {
            log_filter: log_filter.to_owned(),
            traces_endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "shopagent".to_owned()),
        }
    }
}

/// The process's tracer provider. Spans still buffered are exported by
/// [`Telemetry::shutdown`]; call it before the process exits.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every span ended so far.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "spans could not be exported");
        }
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "tracing did not shut down cleanly");
        }
    }
}

/// Installs the process-wide subscriber: JSON logs filtered by `log_filter`, and an
/// OpenTelemetry layer recording the spans of shopagent's own crates at `info`.
///
/// Fails on a malformed traces endpoint. When a subscriber is already installed (a
/// host embedding shopagent, a second call) that one stays, and spans are recorded
/// only if it records them.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let (subscriber, telemetry) = subscriber(config)?;
    let _ = subscriber.try_init();
    Ok(telemetry)
}

/// The subscriber [`init`] installs, and its tracer provider.
fn subscriber(
    config: &TelemetryConfig,
) -> anyhow::Result<(impl tracing::Subscriber + Send + Sync, Telemetry)> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.traces_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .with_context(|| format!("OTLP traces endpoint {endpoint:?}"))?;
        provider = provider.with_batch_exporter(exporter);
    } else {
        // Nothing would export what a sampled span records: its attributes, events and
        // timings were gathered, then dropped, for every span under load.
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    }
    let provider = provider.build();
    let tracer = provider.tracer("shopagent");

    let log_filter =
        EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = json_subscriber::layer()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_opentelemetry_ids(true)
        .with_writer(std::io::stderr)
        .with_filter(log_filter);
    // shopagent's own spans (every crate's target starts with `shopagent`), whatever
    // the log level: a quiet log must not mean no traces.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Nothing here reads OpenTelemetry's current context (the spans' own contexts
        // are read through `tracing`), so entering a span need not make its context
        // current; nor need each span time its idle stretches or name its thread. The
        // first two were paid on every poll of every instrumented future, the third on
        // every span made.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("shopagent", LevelFilter::INFO));
    let subscriber = Registry::default().with(spans).with(logs);
    Ok((subscriber, Telemetry { provider }))
}

/// The process's Prometheus recorder: installed on first use, shared by every server
/// of the process (the `metrics` facade has one global recorder).
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "shopagent_http_request_duration_seconds".into(),
                    ),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ],
                )
                .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (a host embedding us) keeps its own.
            if metrics::set_global_recorder(recorder).is_ok() {
                keep_up(handle.clone());
            }
            handle
        })
        .clone()
}

/// How often the recorder's histograms are folded: between two folds, each request's
/// duration is kept as a sample of its own.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorder's histogram samples into their buckets every
/// [`METRICS_UPKEEP_EVERY`], on a thread of its own for the life of the process. A
/// recorder built by `build_recorder` does this only when `/metrics` is rendered: a
/// server nobody scrapes kept eight bytes per request, for good.
fn keep_up(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let upkeep = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(error) = upkeep {
        tracing::warn!(%error, "the metrics' upkeep thread could not start; histograms are folded only when /metrics is read");
    }
}

#[cfg(test)]
mod tests {
    use shopagent_commands::trace::{continue_trace, current_traceparent};

    use super::*;

    /// The traceparent of a span made under the subscriber `config` makes, continuing
    /// `parent` when given.
    fn traceparent_under(config: &TelemetryConfig, parent: Option<&str>) -> String {
        let (subscriber, _telemetry) = subscriber(config).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            continue_trace(&span, parent);
            span.in_scope(current_traceparent)
                .expect("a span has a trace context")
        })
    }

    fn without_exporter() -> TelemetryConfig {
        TelemetryConfig {
            log_filter: "off".into(),
            traces_endpoint: None,
            service_name: "shopagent-test".into(),
        }
    }

    #[test]
    fn without_an_exporter_a_trace_started_here_has_ids_and_is_not_sampled() {
        let traceparent = traceparent_under(&without_exporter(), None);
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_ne!(parts[1], "0".repeat(32), "a trace id: {traceparent}");
        assert_eq!(parts[3], "00", "not sampled: {traceparent}");
    }

    #[test]
    fn without_an_exporter_a_callers_sampled_trace_stays_sampled() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traceparent = traceparent_under(&without_exporter(), Some(caller));
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "the caller's trace: {traceparent}"
        );
        assert!(traceparent.ends_with("-01"), "sampled: {traceparent}");
        assert!(
            !traceparent.contains("00f067aa0ba902b7"),
            "a span of its own"
        );
    }

    #[test]
    fn with_an_exporter_a_trace_started_here_is_sampled() {
        let config = TelemetryConfig {
            // Nothing listens there: whatever the batch processor sends is refused.
            traces_endpoint: Some("http://127.0.0.1:9/v1/traces".into()),
            ..without_exporter()
        };
        let traceparent = traceparent_under(&config, None);
        assert!(traceparent.ends_with("-01"), "sampled: {traceparent}");
    }
}
