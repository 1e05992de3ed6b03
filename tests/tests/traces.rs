//! The waypoint's request spans, end to end: a client request through the waypoint is one
//! SERVER span exported over OTLP/gRPC (to a receiver speaking the real protocol), child of the
//! client's `traceparent` when it sent one, and the application receives a `traceparent` whose
//! parent is that span.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests: a panic is the failure report

use std::net::SocketAddr;

use e2e::WAIT;
use e2e::authz_world::{AuthzWorld, WAYPOINT_POD, overlay};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Where the receiver listens, inside the waypoint's pod.
const COLLECTOR: &str = "127.0.0.1:4317";

/// Every span received, with its resource's `service.name`.
struct Receiver(mpsc::UnboundedSender<(String, Span)>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string_value(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_value(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string_value(kv.value.as_ref()?.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the span of trace `trace_id`.
async fn span_of(
    spans: &mut mpsc::UnboundedReceiver<(String, Span)>,
    trace_id: &str,
) -> (String, Span) {
    timeout(WAIT, async {
        loop {
            let (service, span) = spans.recv().await.expect("receiver stopped");
            if hex(&span.trace_id) == trace_id {
                return (service, span);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no span of trace {trace_id} exported within {WAIT:?}"))
}

/// `traceparent` as the application saw it: (trace id, parent span id, flags).
fn seen_traceparent(body: &str) -> (String, String, String) {
    let value = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("the application got no traceparent:\n{body}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

#[test]
fn request_spans_are_exported_and_propagated() {
    e2e::on_current_thread(run());
}

async fn run() {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{COLLECTOR}")),
        ("TRACE_SAMPLING", "100".to_owned()),
    ];
    let mut world = AuthzWorld::start("traces", &env).await;
    let (tx, mut spans) = mpsc::unbounded_channel();
    let listener = world
        .waypoint_pod
        .netns()
        .listen(COLLECTOR.parse().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // payments/api through the waypoint, and a marker each proxy reports when it has it.
    let config = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: payments\n  labels: {istio.io/use-waypoint: waypoint}\nspec:\n  clusterIP: 10.96.2.10\n  selector: {app: api}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: zz-sync-traces, namespace: payments}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{from: [{source: {namespaces: [\"zz-none\"]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: traces, namespace: zz-sync}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [\"zz-none\"]}}]}]}\n";
    let text = overlay(&world.world_text, config);
    world.mesh.write_cluster_text(&text);
    let node_a = world.nodes["node-a"];
    world
        .mesh
        .ztunnel(node_a)
        .wait_for_lines(&["xDS resources received", "zz-sync/traces"], 1)
        .await;
    world
        .mesh
        .waypoint(WAYPOINT_POD)
        .wait_for_lines(&["waypoint policy received", "payments/zz-sync-traces"], 1)
        .await;

    let (web, _) = &world.pods["storefront/web-0"];
    let vip = SocketAddr::new(world.services["payments/api"].into(), 80);
    let get = |headers: Vec<(String, String)>| async move {
        let stream = timeout(WAIT, web.netns().connect(vip))
            .await
            .unwrap()
            .unwrap();
        timeout(
            WAIT,
            e2e::http::request(stream, "GET", "/v1/pay?x=1", &headers),
        )
        .await
        .unwrap()
        .unwrap()
    };

    // 1. The client's trace continues through the waypoint.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let reply = get(vec![(
        "traceparent".to_owned(),
        format!("00-{trace_id}-{client_span}-01"),
    )])
    .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    let (seen_trace, seen_parent, flags) = seen_traceparent(&reply.body);
    assert_eq!(
        seen_trace, trace_id,
        "the application is in the client's trace"
    );
    assert_ne!(
        seen_parent, client_span,
        "the waypoint's span sits between them"
    );
    assert_eq!(flags, "01", "still sampled");
    let (service, span) = span_of(&mut spans, trace_id).await;
    println!("span {:?} of {service}: {:?}", span.name, span.attributes);
    assert_eq!(service, "waypoint.payments");
    assert_eq!(hex(&span.parent_span_id), client_span);
    assert_eq!(
        hex(&span.span_id),
        seen_parent,
        "the application's parent is the waypoint's span"
    );
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&span, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(attribute(&span, "url.path").as_deref(), Some("/v1/pay"));
    assert_eq!(
        attribute(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&span, "source.principal").as_deref(),
        Some("spiffe://cluster.local/ns/storefront/sa/web")
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);

    // 2. Without a client trace, the waypoint starts one (sampling at 100%).
    let reply = get(Vec::new()).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    let (new_trace, new_parent, flags) = seen_traceparent(&reply.body);
    assert_ne!(new_trace, trace_id);
    assert_eq!(flags, "01");
    let (_, span) = span_of(&mut spans, &new_trace).await;
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&span.span_id), new_parent);
}
