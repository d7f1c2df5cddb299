//! Traces with real processes: a two-gateway cluster and a worker process export spans over
//! OTLP to a receiver in this test; a `travel` workflow started at one gateway with a W3C
//! `traceparent` calls `search-worker`, which only a worker attached to the other gateway
//! serves, so the call is forwarded there and run in the worker. Every span of the run lands
//! in the caller's trace, each under the span that caused it.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_tests::{client, example_bin, send, wait_until, Cluster};

/// A span as received: its name, parent and the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    parent: Vec<u8>,
    service: String,
}

/// Spans received, by trace id and span id.
type Spans = Arc<Mutex<BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Received>>>>;

struct Receiver(Spans);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.entry(span.trace_id.clone()).or_default().insert(
                        span.span_id.clone(),
                        Received {
                            name: span.name.clone(),
                            parent: span.parent_span_id.clone(),
                            service: service.clone(),
                        },
                    );
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_workflow_s_trace_goes_through_a_forwarded_call_and_a_worker() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let spans: Spans = Arc::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let collector = listener.local_addr().unwrap();
    let receiver = TraceServiceServer::new(Receiver(spans.clone()));
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(receiver)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // Every process started from here on exports to the receiver, in batches 100 ms apart.
    // (This file holds one test: nothing else in its process reads the environment.)
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(&dir.path().join("cluster"), 1, 1, 2).unwrap();
    let gateways = cluster.gateways();
    let attached = cluster
        .nodes
        .iter()
        .find(|n| n.http.as_deref() == Some(gateways[1].as_str()))
        .unwrap();
    let mut worker = Command::new(example_bin("hello-worker"))
        .args(["--gateway", attached.workers.as_ref().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = client();
    wait_until(Duration::from_secs(30), || {
        send(
            http.post(format!("{}/function/search-worker", gateways[1]))
                .body(r#"{"trip":"warm-up"}"#),
        )
        .0 == 200
    })
    .expect("the worker serves search-worker");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let (status, body) = send(
        http.post(format!("{}/workflows/travel/trip-traced", gateways[0]))
            .header("traceparent", format!("00-{trace_id}-{caller}-01"))
            .body(r#"{"search":"search-worker"}"#),
    );
    assert_eq!(status, 202, "{body}");
    wait_until(Duration::from_secs(30), || {
        let (_, w) = send(http.get(format!("{}/workflows/trip-traced", gateways[0])));
        w["status"] == "succeeded"
    })
    .expect("the trip is booked");

    // Every span of the run, once each one checked below is in. (A span ends once its
    // children have: the request's only after the workflow's invocation, so it may come late.)
    let trace: BTreeMap<Vec<u8>, Received> = {
        let mut trace = BTreeMap::new();
        let wanted = |t: &BTreeMap<Vec<u8>, Received>| {
            let mut names = vec![
                "POST /workflows/{name}/{id}".to_string(),
                "invoke travel".into(),
                "call search-worker".into(),
                "POST /function/{name}".into(),
                "invoke search-worker".into(),
                "worker search-worker".into(),
            ];
            for kind in ["flight", "hotel", "car"] {
                names.push(format!("call reserve_{kind}"));
                names.push(format!("invoke reserve_{kind}"));
            }
            names.iter().all(|n| t.values().any(|s| &s.name == n))
        };
        let found = wait_until(Duration::from_secs(30), || {
            let spans = spans.lock().unwrap();
            trace = spans
                .iter()
                .find(|(id, _)| hex(id) == trace_id)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            wanted(&trace)
        });
        let names: Vec<&str> = trace.values().map(|s| s.name.as_str()).collect();
        found.unwrap_or_else(|_| panic!("the trace is incomplete: {names:?}"));
        trace
    };
    let names: Vec<(&str, &str)> = trace
        .values()
        .map(|s| (s.name.as_str(), s.service.as_str()))
        .collect();

    // Each span, by name, and the name of its parent.
    let by_name = |name: &str| -> Vec<(&Vec<u8>, &Received)> {
        trace.iter().filter(|(_, s)| s.name == name).collect()
    };
    let one = |name: &str| -> (&Vec<u8>, &Received) {
        let found = by_name(name);
        assert_eq!(found.len(), 1, "one span {name:?} in {names:?}");
        found[0]
    };
    let parent_name = |span: &Received| -> String {
        trace
            .get(&span.parent)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| format!("outside: {}", hex(&span.parent)))
    };
    let (_, start) = one("POST /workflows/{name}/{id}");
    assert_eq!(
        hex(&start.parent),
        caller,
        "the request's span is the caller's child"
    );
    assert_eq!(
        parent_name(one("invoke travel").1),
        "POST /workflows/{name}/{id}"
    );
    assert_eq!(parent_name(one("call search-worker").1), "invoke travel");
    // Forwarded to the other gateway, which hands it to the worker.
    let (_, forwarded) = one("POST /function/{name}");
    assert_eq!(parent_name(forwarded), "call search-worker");
    assert_eq!(
        parent_name(one("invoke search-worker").1),
        "POST /function/{name}"
    );
    let (_, worker_span) = one("worker search-worker");
    assert_eq!(parent_name(worker_span), "invoke search-worker");
    assert!(worker_span.service.contains("hello-worker"), "{names:?}");
    assert!(start.service.contains("tally"), "{names:?}");
    // The reservations: each a call step, its invocation, and the append it makes.
    for kind in ["flight", "hotel", "car"] {
        assert_eq!(
            parent_name(one(&format!("call reserve_{kind}")).1),
            "invoke travel"
        );
        let (invoke_id, invoke) = one(&format!("invoke reserve_{kind}"));
        assert_eq!(parent_name(invoke), format!("call reserve_{kind}"));
        assert!(
            trace
                .values()
                .any(|s| s.name == "log append" && &s.parent == invoke_id),
            "reserve_{kind} appends under its invocation: {names:?}"
        );
    }
    // The workflow's own steps log under it too.
    assert!(
        trace
            .values()
            .any(|s| s.name.starts_with("log ") && parent_name(s) == "invoke travel"),
        "{names:?}"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    drop(cluster);
}
