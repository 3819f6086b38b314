//! Trace context carried through the log.
//!
//! Every appended event stores the W3C `traceparent` of the span that appended it: the
//! command's span. A reader that later handles the event continues that trace, so one
//! trace shows a request and its asynchronous consequences:
//!
//! * a process-manager step is a child of the command that appended its cause;
//! * a batch (a projection's, the publisher's) mixes events of many traces: it is a
//!   child of their trace when they all share one, and otherwise a root span linked to
//!   each (OpenTelemetry's shape for batch processing).
//!
//! Without an OpenTelemetry layer in the process (the library used on its own, most
//! tests) these are plain `tracing` spans, and what is stored is what the caller sent.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::StoredEvent;

/// Links past this many are dropped: a 1,000-event batch need not carry 1,000 links.
const MAX_LINKS: usize = 32;

/// The W3C `traceparent` of the current span, when it is an OpenTelemetry span.
pub fn current_traceparent() -> Option<String> {
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The remote span a `traceparent` names, if it is well formed.
pub fn remote_context(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of the span `traceparent` names; without one (or with a
/// malformed one) the span starts a trace of its own.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(remote_context) {
        // Fails only when no OpenTelemetry layer is installed: nothing to continue.
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of the span `traceparent` names unless the current span is
/// already in a trace (which `span`, created inside it, then continues).
pub fn continue_trace_unless_traced(span: &Span, traceparent: Option<&str>) {
    if !Span::current().context().span().span_context().is_valid() {
        continue_trace(span, traceparent);
    }
}

/// The span of a reader handling one event: `{reader} {step}`, a consumer continuing
/// the trace of the command that appended the event.
pub fn event_span(reader: &'static str, step: &'static str, event: &StoredEvent) -> Span {
    let span = tracing::info_span!(
        "handle event",
        otel.name = %format_args!("{reader} {step}"),
        otel.kind = "consumer",
        reader,
        step,
        position = event.position(),
        event_type = %event.event_type,
        aggregate_type = %event.aggregate_type,
        aggregate_id = %event.aggregate_id,
    );
    continue_trace(&span, event.metadata.traceparent.as_deref());
    span
}

/// Ties a batch's `span` to the traces of its `events`: their child when they share
/// one trace, linked to each otherwise.
pub fn join_batch(span: &Span, events: &[StoredEvent]) {
    let mut contexts = events
        .iter()
        .filter_map(|event| event.metadata.traceparent.as_deref())
        .filter_map(remote_context)
        .map(|context| context.span().span_context().clone());
    let Some(first) = contexts.next() else {
        return;
    };
    let mut distinct: Vec<SpanContext> = vec![first];
    for context in contexts {
        if distinct.len() == MAX_LINKS {
            break;
        }
        if !distinct.iter().any(|seen| seen == &context) {
            distinct.push(context);
        }
    }
    let one_trace = distinct
        .iter()
        .all(|context| context.trace_id() == distinct[0].trace_id());
    if one_trace {
        let _ = span.set_parent(Context::new().with_remote_span_context(distinct.remove(0)));
    }
    for context in distinct {
        span.add_link(context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_traceparent_names_no_parent() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(remote_context(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_w3c_traceparent_names_its_remote_span() {
        let context = remote_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .expect("valid");
        let span = context.span();
        let span = span.span_context();
        assert_eq!(
            span.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(span.span_id().to_string(), "b7ad6b7169203331");
        assert!(span.is_sampled() && span.is_remote());
    }

    #[test]
    fn without_an_opentelemetry_layer_there_is_no_current_traceparent() {
        let span = tracing::info_span!("outside any layer");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
    }
}
