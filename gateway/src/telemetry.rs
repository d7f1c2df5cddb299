//! Logs and traces of a Tally process. Logs go to stderr as text or JSON lines, filtered by
//! `RUST_LOG`. Traces go to an OpenTelemetry collector over OTLP (gRPC) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: every span
//! of the target `tally::trace` (an HTTP request, an invocation, a workflow step, a log call,
//! a worker's call), with the W3C trace context taken from and passed to other processes
//! (`tally_sdk::trace`). The other `OTEL_*` variables (`OTEL_SERVICE_NAME`,
//! `OTEL_BSP_SCHEDULE_DELAY`, ...) apply as the OpenTelemetry SDK reads them.

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The target of every span Tally exports.
pub const TRACE_TARGET: &str = "tally::trace";

/// Exports spans until dropped; dropping flushes what is left.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces: {e}");
            }
        }
    }
}

/// Whether an OTLP endpoint is configured.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the process's logging (JSON lines when `json`, else text, coloured only on a
/// terminal) and, when an OTLP endpoint is configured, trace export as `service` (unless
/// `OTEL_SERVICE_NAME` says otherwise). Trace export needs a tokio runtime: call it inside
/// one (`Runtime::enter`).
pub fn init(service: &str, json: bool) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info".into())
        // Spans for traces only: never in the logs.
        .add_directive(
            format!("{TRACE_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = if json {
        logs.json().flatten_event(true).boxed()
    } else {
        logs.boxed()
    };
    let (provider, traces) = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service.to_string());
        }
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tally"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TRACE_TARGET, tracing::Level::INFO),
            );
        (Some(provider), Some(layer))
    } else {
        (None, None)
    };
    // Two stacks rather than an `Option` layer: an absent layer counts as interested in every
    // span, which would have the registry record each one of them for nothing.
    let logging = tracing_subscriber::registry().with(logs.with_filter(filter));
    match traces {
        Some(traces) => logging.with(traces).try_init(),
        None => logging.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing logging: {e}"))?;
    Ok(Telemetry { provider })
}
