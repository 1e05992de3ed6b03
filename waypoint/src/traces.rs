//! A span per request, exported over OTLP/gRPC, with W3C trace context: the client's
//! `traceparent` (when it sent one) is the span's parent, and the request goes on to the
//! endpoint with a `traceparent` naming the waypoint's span, so the application's spans hang
//! under it. Sampling follows the parent's decision, else a configured percentage.
//!
//! Export never blocks a request: spans are batched and sent from the SDK's own worker, and a
//! collector that is down costs dropped spans (logged by the SDK), not latency.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}")]
pub struct TracesError {
    endpoint: String,
    #[source]
    cause: opentelemetry_otlp::ExporterBuildError,
}

/// The tracer of the process.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Traces {
    /// Exports to the OTLP/gRPC collector at `endpoint` (e.g. `http://otel-collector:4317`),
    /// sampling `percent` of the traces that arrive without a sampling decision. Must run
    /// inside the tokio runtime (the gRPC channel lives there).
    pub fn start(endpoint: &str, percent: f64, service_name: String) -> Result<Self, TracesError> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|cause| TracesError {
                endpoint: endpoint.to_owned(),
                cause,
            })?;
        let ratio = (percent / 100.0).clamp(0.0, 1.0);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build();
        let tracer = provider.tracer("waypoint");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Starts the server span of a request, child of the client's trace context if it sent one.
    pub fn request_span(
        &self,
        headers: &HeaderMap,
        name: String,
        attributes: Vec<KeyValue>,
    ) -> RequestSpan {
        let parent = self.propagator.extract(&Headers(headers));
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        RequestSpan {
            context: Context::new().with_span(span),
        }
    }

    /// Sends what is batched; called on shutdown. The SDK waits for its worker thread, so the
    /// wait happens off the runtime, which must keep running the gRPC channel meanwhile.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "flushing traces at shutdown failed"),
            Err(err) => tracing::warn!(error = %err, "flushing traces at shutdown failed"),
        }
    }

    /// Writes `span`'s context into `headers` (`traceparent`, `tracestate`).
    pub fn inject(&self, span: &RequestSpan, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(&span.context, &mut HeadersMut(headers));
    }
}

/// One request's span.
pub struct RequestSpan {
    context: Context,
}

impl RequestSpan {
    /// Ends the span with the response's status and Envoy's response flags.
    pub fn end(self, status: u16, flags: &'static str, upstream: Option<String>) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.set_attribute(KeyValue::new("response_flags", flags));
        if let Some(upstream) = upstream {
            span.set_attribute(KeyValue::new("upstream.workload", upstream));
        }
        // OTel's HTTP server convention: 5xx is an error, 4xx is the client's business.
        if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
