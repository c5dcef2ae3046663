//! `--otlp-endpoint`: the bridge's spans, exported over OTLP/HTTP to a
//! receiver the test runs, for webhooks published to JetStream
//! (nats-server 2.15): a server span per request and a producer span per
//! publish, with the service name and the outcome, in the sender's trace;
//! the message's `traceparent` names the publish span; what is still
//! batched at shutdown is exported before the process ends.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::support::otlp::{OtlpReceiver, Received};
use crate::support::process::BridgeProcess;
use crate::support::tls::Pki;
use crate::support::*;

const SENDER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";

/// OTLP's span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
/// Status codes: unset and error.
const UNSET: i32 = 0;
const ERROR: i32 = 2;

fn one<'a>(spans: &'a [Received], what: &str, pick: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {spans:#?}");
    found[0]
}

fn status_code(span: &Received) -> i32 {
    span.span.status.as_ref().map_or(UNSET, |s| s.code)
}

/// The bridge binary, configured as a deploy file would (environment
/// only), its stderr in `log`; `batch_delay` is the SDK's
/// OTEL_BSP_SCHEDULE_DELAY in milliseconds.
fn bridge(nats: &str, endpoint: &str, batch_delay: &str, log: &std::path::Path) -> BridgeProcess {
    bridge_with(nats, endpoint, batch_delay, log, &[])
}

fn bridge_with(
    nats: &str,
    endpoint: &str,
    batch_delay: &str,
    log: &std::path::Path,
    more: &[(&str, &str)],
) -> BridgeProcess {
    let env: Vec<(&str, String)> = vec![
        ("APIZEE_BRIDGE_SINK", "nats".into()),
        ("APIZEE_BRIDGE_NATS_URL", nats.into()),
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "true".into()),
        ("APIZEE_BRIDGE_NATS_STREAM", "APIZEE".into()),
        ("APIZEE_BRIDGE_OTLP_ENDPOINT", endpoint.into()),
        (
            "APIZEE_BRIDGE_OTLP_SERVICE_NAME",
            "bridge-under-test".into(),
        ),
        ("APIZEE_BRIDGE_LOG_FORMAT", "json".into()),
        ("APIZEE_BRIDGE_LOG_LEVEL", "info,apizee_bridge=debug".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", batch_delay.into()),
    ];
    let env = env
        .into_iter()
        .chain(more.iter().map(|(k, v)| (*k, (*v).to_owned())))
        .collect::<Vec<_>>();
    BridgeProcess::spawn_on_free_ports(env.iter().map(|(k, v)| (*k, v.as_str())), log).0
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &'static str) -> Reply {
    let headers = [&[("content-type", "application/json")], headers].concat();
    request(
        addr,
        "POST",
        "/webhooks",
        &headers,
        Bytes::from_static(body.as_bytes()),
    )
    .await
    .unwrap_or_else(|e| panic!("POST /webhooks: {e}"))
}

/// Everything the spans say, for webhooks that were published, refused,
/// and refused for want of a broker; the batch delay is longer than the
/// test, so what arrives is what the shutdown flushed.
#[tokio::test]
async fn spans_of_requests_and_publishes_reach_an_otlp_receiver_at_shutdown() {
    let receiver = OtlpReceiver::start().await;
    let mut nats = NatsServer::start(true).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("bridge.log");
    let mut bridge = bridge(&nats.url(), &receiver.endpoint(), "600000", &log);
    bridge.wait_ready().await;
    let addr = bridge.addr;
    let client = nats.client().await;
    let mut messages = crate::support::nats::subscribe(&client, "apizee.>").await;

    // 1. A sender's trace, continued; 2. none, so the bridge starts one;
    // 3. refused before any publish; 4. the broker gone: a 503.
    let traceparent = format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01");
    let continued = post(
        addr,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ],
        SPEC_TICKET,
    )
    .await;
    assert_eq!(continued.status, 200, "{}", continued.text());
    assert_eq!(post(addr, &[], SPEC_CONVERSATION).await.status, 200);
    let refused = post(addr, &[], r#"{"event":"update","object":"ticket"}"#).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let mut published = Vec::new();
    for _ in 0..2 {
        let message = crate::support::nats::next_message(&mut messages).await;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        published.push((
            message.subject.to_string(),
            header("traceparent"),
            header("apizee-event-id"),
        ));
    }
    drop(messages);
    drop(client);
    nats.kill();
    wait_until(
        "the bridge to report not ready",
        async || matches!(get(addr, "/readyz").await, Ok(r) if r.status == 503),
    )
    .await;
    assert_eq!(post(addr, &[], SPEC_TICKET).await.status, 503);
    assert_eq!(receiver.spans().len(), 0, "exported before the shutdown");

    bridge.signal("TERM");
    assert!(bridge.wait_exit().await.success());
    let spans = receiver.spans();
    assert_eq!(receiver.refused(), Vec::<String>::new());
    assert_eq!(spans.len(), 7, "{spans:#?}");
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("bridge-under-test")
        );
        assert_eq!(
            span.resource.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(span.scope, "apizee-bridge");
    }
    let requests: Vec<Received> = spans
        .iter()
        .filter(|s| s.span.kind == SERVER)
        .cloned()
        .collect();
    let publishes: Vec<Received> = spans
        .iter()
        .filter(|s| s.span.kind == PRODUCER)
        .cloned()
        .collect();
    assert_eq!((requests.len(), publishes.len()), (4, 3), "{spans:#?}");
    for request in &requests {
        assert_eq!(request.span.name, "POST /webhooks");
        assert_eq!(
            request.attribute("http.request.method").as_deref(),
            Some("POST")
        );
        assert_eq!(
            request.attribute("http.route").as_deref(),
            Some("/webhooks")
        );
        assert_eq!(
            request.attribute("client.address").as_deref(),
            Some("127.0.0.1")
        );
    }

    // The sender's trace: the request span is the child of the sender's
    // span, the publish span of the request span, and the message names
    // the publish span as its parent.
    let sent = one(&requests, "the request with a traceparent", |s| {
        s.trace_id() == SENDER_TRACE
    });
    assert_eq!(sent.parent_span_id(), SENDER_SPAN);
    assert_eq!(
        sent.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        sent.attribute("apizee.outcome").as_deref(),
        Some("published")
    );
    assert_eq!(status_code(sent), UNSET);
    let sent_publish = one(&publishes, "its publish", |s| s.trace_id() == SENDER_TRACE);
    assert_eq!(sent_publish.parent_span_id(), sent.span_id());
    assert_eq!(sent_publish.span.name, "send apizee.ticket.update");
    let (subject, traceparent, event_id) = &published[0];
    assert_eq!(subject, "apizee.ticket.update");
    assert_eq!(
        traceparent,
        &format!("00-{SENDER_TRACE}-{}-01", sent_publish.span_id())
    );
    for (key, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.name", "send"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "apizee.ticket.update"),
        ("messaging.message.id", event_id.as_str()),
        ("apizee.outcome", "ok"),
    ] {
        assert_eq!(sent_publish.attribute(key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(status_code(sent_publish), UNSET);
    assert!(
        sent_publish.span.start_time_unix_nano >= sent.span.start_time_unix_nano
            && sent_publish.span.end_time_unix_nano <= sent.span.end_time_unix_nano,
        "the publish happens within the request: {sent:#?} {sent_publish:#?}"
    );

    // The trace the bridge began: a root span, the message in its trace.
    let (subject, traceparent, _) = &published[1];
    assert_eq!(subject, "apizee.conversation.update");
    let begun = one(&publishes, "the conversation's publish", |s| {
        s.attribute("messaging.destination.name").as_deref() == Some("apizee.conversation.update")
    });
    assert_eq!(
        traceparent,
        &format!("00-{}-{}-01", begun.trace_id(), begun.span_id())
    );
    let root = one(&requests, "its request", |s| {
        s.span_id() == begun.parent_span_id()
    });
    assert_eq!(root.parent_span_id(), "");
    assert_ne!(root.trace_id(), SENDER_TRACE);

    // Refused: the request span alone, with the rejection's code; a 4xx is
    // the sender's error, not the server's.
    let invalid = one(&requests, "the refused request", |s| {
        s.attribute("http.response.status_code").as_deref() == Some("422")
    });
    assert_eq!(
        invalid.attribute("apizee.outcome").as_deref(),
        Some("invalid_envelope")
    );
    assert_eq!(status_code(invalid), UNSET);
    assert!(!publishes.iter().any(|p| p.trace_id() == invalid.trace_id()));

    // The broker gone: both spans are errors, with what happened.
    let unavailable = one(&requests, "the 503", |s| {
        s.attribute("http.response.status_code").as_deref() == Some("503")
    });
    assert_eq!(
        unavailable.attribute("apizee.outcome").as_deref(),
        Some("broker_unavailable")
    );
    assert_eq!(
        unavailable.attribute("error.type").as_deref(),
        Some("broker_unavailable")
    );
    assert_eq!(status_code(unavailable), ERROR);
    let failed = one(&publishes, "its publish", |s| {
        s.trace_id() == unavailable.trace_id()
    });
    assert_eq!(
        failed.attribute("apizee.outcome").as_deref(),
        Some("not_connected")
    );
    assert_eq!(
        failed.attribute("error.type").as_deref(),
        Some("not_connected")
    );
    assert_eq!(status_code(failed), ERROR);

    // Logs carry the trace id: the sender's, on the debug line of its
    // publish.
    let logged = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        logged
            .lines()
            .any(|line| line.contains("\"delivered\"") && line.contains(SENDER_TRACE)),
        "{logged}"
    );
}

/// While the bridge runs, spans leave in batches on the SDK's schedule,
/// without waiting for a shutdown.
#[tokio::test]
async fn spans_are_exported_while_the_bridge_runs() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start(true).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("bridge.log");
    let mut bridge = bridge(&nats.url(), &receiver.endpoint(), "50", &log);
    bridge.wait_ready().await;
    assert_eq!(post(bridge.addr, &[], SPEC_TICKET).await.status, 200);
    let spans = receiver.wait_for(2).await;
    let kinds: Vec<i32> = spans.iter().map(|s| s.span.kind).collect();
    assert!(
        kinds.contains(&SERVER) && kinds.contains(&PRODUCER),
        "{spans:#?}"
    );
    bridge.kill_9();
}

/// An https collector, its certificate checked against --otlp-ca-file.
#[tokio::test]
async fn spans_reach_an_https_receiver_trusted_through_the_ca_file() {
    let pki = Pki::new("otlp test CA");
    let receiver = OtlpReceiver::start_tls(&pki.server("collector")).await;
    let ca = pki.write("ca.pem", &pki.ca_pem());
    let nats = NatsServer::start(true).await;
    let log = pki.path("bridge.log");
    let ca = ca.display().to_string();
    let mut bridge = bridge_with(
        &nats.url(),
        &receiver.endpoint(),
        "50",
        &log,
        &[("APIZEE_BRIDGE_OTLP_CA_FILE", &ca)],
    );
    bridge.wait_ready().await;
    assert_eq!(post(bridge.addr, &[], SPEC_TICKET).await.status, 200);
    let spans = receiver.wait_for(2).await;
    assert!(receiver.endpoint().starts_with("https://"));
    assert_eq!(spans.len(), 2, "{spans:#?}");
    bridge.kill_9();
}

/// The certificate is checked: trusting another CA (the system's store,
/// pointed elsewhere with SSL_CERT_FILE), no span gets through, and the
/// log says the export failed.
#[tokio::test]
async fn an_https_receiver_with_an_unknown_certificate_gets_no_spans() {
    let pki = Pki::new("otlp test CA");
    let receiver = OtlpReceiver::start_tls(&pki.server("collector")).await;
    let other = Pki::new("another CA");
    let other_ca = other.write("ca.pem", &other.ca_pem()).display().to_string();
    let nats = NatsServer::start(true).await;
    let log = pki.path("bridge.log");
    let mut bridge = bridge_with(
        &nats.url(),
        &receiver.endpoint(),
        "50",
        &log,
        &[("SSL_CERT_FILE", &other_ca)],
    );
    bridge.wait_ready().await;
    assert_eq!(post(bridge.addr, &[], SPEC_TICKET).await.status, 200);
    wait_until("the failed export in the log", async || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("BatchSpanProcessor.ExportError"))
    })
    .await;
    assert_eq!(receiver.spans().len(), 0);
    bridge.kill_9();
}
