//! W3C trace context on outgoing requests: the service called can join the trace of
//! the call (the connector-call span current when the request is sent).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds `traceparent` (and `tracestate`, if any) naming the current span; nothing when
/// the process records no OpenTelemetry spans.
pub(crate) trait WithTraceContext {
    fn with_trace_context(self) -> Self;
}

impl WithTraceContext for reqwest::RequestBuilder {
    fn with_trace_context(self) -> Self {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return self;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier
            .into_iter()
            .fold(self, |request, (name, value)| request.header(name, value))
    }
}
