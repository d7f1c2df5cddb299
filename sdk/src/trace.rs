//! Traces across processes: the W3C `traceparent` of the current span, to send along with a
//! call, and the parent a span takes from one received.
//!
//! Tally's spans have the target `tally::trace` (`tracing::info_span!(target: "tally::trace",
//! ...)`), and only an OpenTelemetry layer listens to it (`gateway::telemetry`): with none
//! installed they cost next to nothing, and they never reach the logs.

use opentelemetry::propagation::{Extractor, Injector};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (and gRPC field) a trace context travels in.
pub const TRACEPARENT: &str = "traceparent";

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The `traceparent` of the current span, if a trace is being recorded.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut Map(&mut fields))
    });
    fields.remove(TRACEPARENT).filter(|t| !t.is_empty())
}

/// Makes `span` a child of the span `traceparent` names (from another process); a missing
/// or malformed one leaves it as it is.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|t| !t.is_empty()) else {
        return;
    };
    let context =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&One(Some(traceparent))));
    use opentelemetry::trace::TraceContextExt as _;
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}
