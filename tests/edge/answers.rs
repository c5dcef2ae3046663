//! In-process HTTP tests of every answer the webhook listener gives, with a
//! memory sink standing in for the broker.

use std::time::Duration;

use crate::support::answers::{assert_error, bridge_with};
use crate::support::process::{RUN_DEADLINE, Watched};
use crate::support::*;
use apizee_bridge::sink::PublishError;
use apizee_bridge::sink::memory::Behaviour;
use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn accepted_webhook_is_published_byte_for_byte() {
    let (bridge, sink) = bridge_with(&[]).await;
    let reply = bridge.post(SPEC_TICKET).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        reply.json(),
        json!({"topic": "apizee.ticket.update", "id": message.event_id})
    );
    assert_eq!(message.topic, "apizee.ticket.update");
    assert_eq!(message.key, "100");
    assert_eq!(message.payload, Bytes::from_static(SPEC_TICKET.as_bytes()));
    let header = |name: &str| {
        message
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("apizee-event"), Some("update"));
    assert_eq!(header("apizee-object"), Some("ticket"));
    assert_eq!(header("apizee-object-id"), Some("100"));
    assert_eq!(header("apizee-time"), Some("1575976413"));
    assert_eq!(header("apizee-event-id"), Some(message.event_id.as_str()));
    let received_at = header("apizee-received-at").unwrap_or_default();
    assert!(
        humantime::parse_rfc3339(received_at).is_ok(),
        "{received_at}"
    );
}

#[tokio::test]
async fn retried_identical_webhook_gets_the_same_id() {
    let (bridge, _sink) = bridge_with(&[]).await;
    let first = bridge.post(SPEC_CONVERSATION).await.json();
    let second = bridge.post(SPEC_CONVERSATION).await.json();
    assert_eq!(first, second);
    assert_eq!(first["topic"], "apizee.conversation.update");
}

#[tokio::test]
async fn content_types_that_are_json_or_absent_are_accepted() {
    let (bridge, sink) = bridge_with(&[]).await;
    for content_type in [
        Some("application/json"),
        Some("application/JSON"),
        Some("Application/Json; charset=utf-8"),
        Some("application/vnd.apizee+json"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("content-type", ct)])
            .unwrap_or_default();
        let reply = bridge
            .request("POST", "/webhooks", &headers, Bytes::from(SPEC_TICKET))
            .await;
        assert_eq!(reply.status, 200, "{content_type:?}: {}", reply.text());
    }
    assert_eq!(sink.messages().len(), 5);
}

#[tokio::test]
async fn trailing_slash_on_the_path_is_accepted() {
    let (bridge, _sink) = bridge_with(&["--path", "/apizeehooks/"]).await;
    for path in ["/apizeehooks", "/apizeehooks/"] {
        let reply = bridge
            .request("POST", path, &[], Bytes::from(SPEC_TICKET))
            .await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let reply = bridge
        .request("POST", "/webhooks", &[], Bytes::from(SPEC_TICKET))
        .await;
    assert_error(
        &reply,
        404,
        "not_found",
        "the default path, no longer configured",
    );
}

/// One body for the answer: which bodies are not JSON is the parser's
/// business (`src/envelope/tests.rs`).
#[tokio::test]
async fn malformed_json_is_400_and_nothing_is_published() {
    let (bridge, sink) = bridge_with(&[]).await;
    let reply = bridge.post("{\"event\":").await;
    let body = assert_error(&reply, 400, "malformed_json", "a truncated body");
    assert!(body["details"][0]["problem"].is_string(), "{body}");
    assert!(sink.messages().is_empty());
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200, "still serving");
}

#[tokio::test]
async fn invalid_envelope_is_422_listing_every_problem() {
    let (bridge, sink) = bridge_with(&[]).await;
    let reply = bridge
        .post(r#"{"event":"upsert","time":"yesterday","object":"ticket","objectId":-1,"props":{"state":7,"geoloc":{"lat":91}}}"#)
        .await;
    assert_error(&reply, 422, "invalid_envelope", "many problems");
    let fields: Vec<String> = reply.json()["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|p| p["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        fields,
        [
            "event",
            "time",
            "objectId",
            "props.state",
            "props.geoloc.lat"
        ]
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn unknown_enum_values_are_forwarded_and_counted_unless_strict() {
    let body = r#"{"event":"update","time":1,"object":"ticket","objectId":7,"props":{"state":"teleported"}}"#;
    let (bridge, sink) = bridge_with(&[]).await;
    assert_eq!(bridge.post(body).await.status, 200);
    assert_eq!(sink.messages().len(), 1);
    assert!(
        bridge.metrics().await.contains(
            r#"apizee_bridge_unknown_enum_values_total{field="state",object="ticket"} 1"#
        )
    );

    let (strict, strict_sink) = bridge_with(&["--strict"]).await;
    let reply = strict.post(body).await;
    assert_error(
        &reply,
        422,
        "invalid_envelope",
        "unknown state under --strict",
    );
    assert_eq!(reply.json()["details"][0]["field"], "props.state");
    assert!(strict_sink.messages().is_empty());
}

#[tokio::test]
async fn object_id_in_topic_must_be_topic_safe() {
    let (bridge, sink) = bridge_with(&["--topic-template", "{prefix}.{object}.{objectId}"]).await;
    let reply = bridge
        .post(r#"{"event":"update","time":1,"object":"conversation","objectId":"a.b","props":{}}"#)
        .await;
    assert_error(&reply, 422, "invalid_envelope", "a dot in a topic objectId");
    assert_eq!(reply.json()["details"][0]["field"], "objectId");
    let reply = bridge.post(SPEC_CONVERSATION).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        sink.messages()[0].topic,
        "apizee.conversation.734e3a7b-eb17-4d3f-901d-bcff178b"
    );
}

#[tokio::test]
async fn explicit_non_json_content_type_is_415() {
    let (bridge, sink) = bridge_with(&[]).await;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let reply = bridge
            .request(
                "POST",
                "/webhooks",
                &[("content-type", content_type)],
                Bytes::from(SPEC_TICKET),
            )
            .await;
        assert_error(&reply, 415, "unsupported_media_type", content_type);
    }
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn declared_oversized_body_is_413() {
    let (bridge, sink) = bridge_with(&["--max-body-bytes", "64"]).await;
    let reply = bridge.post(SPEC_TICKET).await;
    assert_error(&reply, 413, "payload_too_large", "64-byte limit");
    assert!(sink.messages().is_empty());
}

/// A chunked body has no Content-Length to check up front: the limit must
/// hold while reading, and the answer must come without reading the rest.
#[tokio::test]
async fn chunked_oversized_body_is_413_without_reading_it_all() {
    let (bridge, sink) = bridge_with(&["--max-body-bytes", "1024"]).await;
    let mut stream = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = "POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    stream
        .write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Send 4 KiB in 512-byte chunks, then stop without the final chunk: if
    // the bridge waited for the whole body it would never answer.
    let chunk = format!("200\r\n{}\r\n", " ".repeat(512));
    for _ in 0..8 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the bridge answered and closed: fine
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to an oversized chunked body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let (bridge, _sink) = bridge_with(&[]).await;
    for method in ["GET", "PUT", "DELETE"] {
        let reply = bridge.request(method, "/webhooks", &[], Bytes::new()).await;
        assert_error(&reply, 405, "method_not_allowed", method);
        assert_eq!(reply.header("allow"), Some("POST"));
    }
    let reply = bridge
        .request("POST", "/readyz", &[], Bytes::from(SPEC_TICKET))
        .await;
    assert_error(&reply, 405, "method_not_allowed", "POST /readyz");
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn other_paths_are_404() {
    let (bridge, _sink) = bridge_with(&[]).await;
    for path in ["/", "/webhook", "/webhooks/extra", "/metrics"] {
        let reply = bridge
            .request("POST", path, &[], Bytes::from(SPEC_TICKET))
            .await;
        assert_error(&reply, 404, "not_found", path);
    }
}

#[tokio::test]
async fn auth_header_must_carry_a_configured_token() {
    let (bridge, sink) = bridge_with(&[
        "--auth-header",
        "X-Apizee-Secret",
        "--auth-token",
        "old-secret,new-secret",
    ])
    .await;
    let post = |headers: Vec<(&'static str, &'static str)>| {
        let mut all = vec![("content-type", "application/JSON")];
        all.extend(headers);
        let bridge = &bridge;
        async move {
            bridge
                .request("POST", "/webhooks", &all, Bytes::from(SPEC_TICKET))
                .await
        }
    };
    assert_error(&post(vec![]).await, 401, "unauthorized", "no token");
    let wrong = post(vec![("x-apizee-secret", "guess")]).await;
    assert_error(&wrong, 401, "unauthorized", "wrong token");
    assert!(!wrong.text().contains("secret\""), "{}", wrong.text());
    assert!(sink.messages().is_empty());
    assert_eq!(
        post(vec![("x-apizee-secret", "old-secret")]).await.status,
        200
    );
    assert_eq!(
        post(vec![("x-apizee-secret", "new-secret")]).await.status,
        200
    );
    assert_eq!(sink.messages().len(), 2);
}

#[tokio::test]
async fn unauthenticated_requests_learn_nothing_about_the_body() {
    let (bridge, _sink) = bridge_with(&["--auth-header", "X-Token", "--auth-token", "t"]).await;
    // Auth is checked first: an invalid body without credentials is a 401,
    // not a 422 that would tell a prober what the endpoint expects.
    let reply = bridge
        .request(
            "POST",
            "/webhooks",
            &[("content-type", "text/plain")],
            Bytes::from("nope"),
        )
        .await;
    assert_error(&reply, 401, "unauthorized", "no token, invalid body");
}

#[tokio::test]
async fn broker_failure_is_503_with_retry_after() {
    let (bridge, sink) = bridge_with(&["--retry-after", "7s"]).await;
    sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
    let reply = bridge.post(SPEC_TICKET).await;
    assert_error(&reply, 503, "broker_unavailable", "broker not connected");
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert!(sink.messages().is_empty());
    assert!(
        bridge
            .metrics()
            .await
            .contains(r#"apizee_bridge_publishes_total{outcome="not_connected",sink="memory"} 1"#)
    );
}

#[tokio::test]
async fn broker_without_ack_is_503_after_the_publish_timeout() {
    let (bridge, sink) = bridge_with(&["--publish-timeout", "200ms"]).await;
    sink.set_behaviour(Behaviour::Hang);
    let reply = bridge.post(SPEC_TICKET).await;
    assert_error(&reply, 503, "broker_unavailable", "broker hangs");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(
        bridge
            .metrics()
            .await
            .contains(r#"apizee_bridge_publishes_total{outcome="timeout",sink="memory"} 1"#)
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let (bridge, sink) = bridge_with(&[]).await;
    let healthz = get(bridge.addr, "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(healthz.status, 200);
    assert_eq!(healthz.json(), json!({"status": "alive"}));
    let readyz = get(bridge.addr, "/readyz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(readyz.status, 200);
    assert_eq!(readyz.json(), json!({"status": "ready"}));

    sink.set_ready(false);
    let readyz = get(bridge.addr, "/readyz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.json(), json!({"status": "not ready"}));
    assert!(
        bridge
            .metrics()
            .await
            .contains(r#"apizee_bridge_broker_connected{sink="memory"} 0"#)
    );
    // Liveness does not depend on the broker: restarting would not help.
    let healthz = get(bridge.addr, "/healthz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(healthz.status, 200);
}

/// Sends `request` on a fresh connection and reads the answer until the
/// bridge closes it (the request says `connection: close`).
async fn raw_answer(bridge: &Bridge, request: &str) -> String {
    let mut stream = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer to {request:?} within 10 s"))
}

/// `HEAD` is what `GET` is on the health endpoints, without the body: the
/// same status, ready or not, and nothing after the head on the wire.
#[tokio::test]
async fn head_on_health_endpoints_is_the_status_without_a_body() {
    let (bridge, sink) = bridge_with(&[]).await;
    let head = |path: &str| format!("HEAD {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    for (path, ready, status) in [
        ("/healthz", true, "200"),
        ("/readyz", true, "200"),
        ("/readyz", false, "503"),
        ("/healthz", false, "200"),
    ] {
        sink.set_ready(ready);
        let answer = raw_answer(&bridge, &head(path)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "HEAD {path}, ready {ready}: {answer}"
        );
        let (_, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("HEAD {path}: no end of the head in {answer:?}"));
        assert_eq!(body, "", "HEAD {path}, ready {ready}: a body came");
    }
}

/// An HTTP/1.1 request without exactly one Host header is refused before
/// anything else on every path of the webhook listener: the health
/// endpoints, a path that would be 404, and methods that would be 405.
#[tokio::test]
async fn invalid_host_is_checked_first_on_every_path() {
    let (bridge, sink) = bridge_with(&[]).await;
    let cases = [
        ("GET", "/healthz"),
        ("HEAD", "/readyz"),
        ("GET", "/readyz"),
        ("POST", "/readyz"),
        ("GET", "/webhooks"),
        ("GET", "/nowhere"),
        ("POST", "/webhooks"),
    ];
    for (method, path) in cases {
        for hosts in ["", "host: a\r\nhost: b\r\n"] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\n{hosts}content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let answer = raw_answer(&bridge, &request).await;
            let case = format!("{method} {path} with {hosts:?}");
            assert!(answer.starts_with("HTTP/1.1 400 "), "{case}: {answer}");
            if method != "HEAD" {
                assert!(
                    answer.contains(r#""error":"invalid_host""#),
                    "{case}: {answer}"
                );
            }
        }
    }
    assert_eq!(
        metric_value(
            &bridge.metrics().await,
            r#"apizee_bridge_rejections_total{reason="invalid_host"}"#
        ),
        (2 * cases.len()) as f64
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let (bridge, sink) = bridge_with(&[]).await;
    let stream = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    for _ in 0..5 {
        let request = http::Request::post("/webhooks")
            .header("host", "bridge")
            .header("content-type", "application/JSON")
            .body(http_body_util::Full::new(Bytes::from(SPEC_TICKET)))
            .unwrap_or_else(|e| panic!("{e}"));
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200);
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    }
    assert_eq!(sink.messages().len(), 5);
}

#[tokio::test]
async fn metrics_count_requests_rejections_and_publishes() {
    let (bridge, _sink) = bridge_with(&[]).await;
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);
    assert_eq!(bridge.post(SPEC_CONVERSATION).await.status, 200);
    assert_eq!(bridge.post("{").await.status, 400);
    let metrics = bridge.metrics().await;
    for line in [
        r#"apizee_bridge_http_requests_total{code="200",handler="webhook"} 2"#,
        r#"apizee_bridge_http_requests_total{code="400",handler="webhook"} 1"#,
        r#"apizee_bridge_webhooks_received_total{event="update",object="ticket"} 1"#,
        r#"apizee_bridge_webhooks_received_total{event="update",object="conversation"} 1"#,
        r#"apizee_bridge_rejections_total{reason="malformed_json"} 1"#,
        r#"apizee_bridge_publishes_total{outcome="ok",sink="memory"} 2"#,
        r#"apizee_bridge_publish_duration_seconds_count{sink="memory"} 2"#,
        r#"apizee_bridge_request_duration_seconds_count 3"#,
        r#"apizee_bridge_requests_in_flight 0"#,
        r#"apizee_bridge_broker_connected{sink="memory"} 1"#,
        // Labels in name order: revision, rustc, version.
        r#"apizee_bridge_build_info{revision=""#,
        concat!(r#"",version=""#, env!("CARGO_PKG_VERSION"), r#""} 1"#),
        "\nprocess_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    // Every sample belongs to our namespace or is one of the standard
    // process metrics, and no objectId leaks in.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("apizee_bridge_") || line.starts_with("process_"),
            "{line}"
        );
        assert!(!line.contains("734e3a7b"), "{line}");
    }
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let (bridge, _sink) = bridge_with(&[]).await;
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);
    assert_eq!(bridge.post("[]").await.status, 422);
    let exposition = bridge.metrics().await;
    let output = Watched::spawn_with_input(
        std::process::Command::new(tool("promtool", "PROMTOOL", "prometheus"))
            .args(["check", "metrics"]),
        exposition,
    )
    .finish(RUN_DEADLINE)
    .await;
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How long the memory sink takes to acknowledge where a test needs a
/// publish still going on while it does something else: far longer than a
/// busy machine can stall between two steps of a test (0.3 s was not), and
/// well within the 5 s the shutdown gives the sink.
const SLOW_ACK: Duration = Duration::from_secs(2);

/// Starts a POST of the ticket sample in the background and returns once
/// the bridge counts it in flight (the sink should be slow for that).
async fn post_and_wait_in_flight(
    bridge: &Bridge,
) -> tokio::task::JoinHandle<Result<Reply, String>> {
    let addr = bridge.addr;
    let in_flight = tokio::spawn(async move {
        request(
            addr,
            "POST",
            "/webhooks",
            &[("content-type", "application/json")],
            Bytes::from(SPEC_TICKET),
        )
        .await
    });
    let metrics_addr = bridge.metrics_addr;
    wait_until("the request to be in flight", async || {
        matches!(get(metrics_addr, "/metrics").await,
            Ok(r) if r.text().contains("apizee_bridge_requests_in_flight 1"))
    })
    .await;
    in_flight
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops() {
    let (bridge, sink) = bridge_with(&[]).await;
    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(500)));
    let addr = bridge.addr;
    let in_flight = post_and_wait_in_flight(&bridge).await;
    let app = bridge.app.clone();
    bridge.stop().await;
    let reply = in_flight
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(sink.messages().len(), 1);
    assert!(!app.is_ready(), "readiness must be off once shutdown began");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still accepting after shutdown"
    );
}

#[tokio::test]
async fn past_max_in_flight_the_answer_is_429_at_once() {
    let (bridge, sink) = bridge_with(&["--max-in-flight", "1", "--retry-after", "3s"]).await;
    sink.set_behaviour(Behaviour::Delay(SLOW_ACK));
    let first = post_and_wait_in_flight(&bridge).await;
    let second = bridge.post(SPEC_CONVERSATION).await;
    let body = assert_error(
        &second,
        429,
        "too_many_requests",
        "second while the first is in flight",
    );
    assert_eq!(second.header("retry-after"), Some("3"));
    // The message names the budget that was spent (tests/brokers/refusals.rs:
    // the other one).
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("webhooks are already being handled") && !message.contains("authentic"),
        "{message}"
    );

    let first = first
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(sink.messages().len(), 1, "only the first was published");
    // The permit is back: the next webhook goes through.
    sink.set_behaviour(Behaviour::Accept);
    assert_eq!(bridge.post(SPEC_CONVERSATION).await.status, 200);
    assert!(
        bridge
            .metrics()
            .await
            .contains(r#"apizee_bridge_rejections_total{reason="too_many_requests"} 1"#)
    );
}

#[tokio::test]
async fn refused_but_readable_requests_go_to_the_dead_letter_topic() {
    let (bridge, sink) = bridge_with(&["--dead-letter-topic", "apizee.dead-letters"]).await;
    let invalid = r#"{"event":"upsert","time":1,"object":"ticket","objectId":5,"props":{}}"#;
    let reply = bridge.post(invalid).await;
    assert_error(&reply, 422, "invalid_envelope", "invalid, dead-lettered");
    // Not JSON, wrong media type: not dead-lettered without the opt-in, and
    // never for a 415.
    assert_error(
        &bridge.post("{not json").await,
        400,
        "malformed_json",
        "malformed, not dead-lettered",
    );
    let reply = bridge
        .request(
            "POST",
            "/webhooks",
            &[("content-type", "text/plain")],
            Bytes::from(invalid),
        )
        .await;
    assert_error(
        &reply,
        415,
        "unsupported_media_type",
        "text/plain, never dead-lettered",
    );

    // Published in the background, after the 422 was sent.
    wait_until("the dead letter", async || !sink.messages().is_empty()).await;
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"apizee_bridge_dead_letters_total{outcome="ok"}"#
        ),
        1.0
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let dead = &messages[0];
    assert_eq!(dead.topic, "apizee.dead-letters");
    assert_eq!(dead.payload, Bytes::from(invalid));
    let header = |name: &str| {
        dead.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("apizee-rejection-reason"), "invalid_envelope");
    let details: serde_json::Value = serde_json::from_str(&header("apizee-rejection-details"))
        .unwrap_or_else(|e| panic!("details are not JSON: {e}"));
    assert_eq!(details[0]["field"], "event");
    // The body's event id in the header and the key; de-duplication gets
    // an id of its own, so that the webhook this body becomes once
    // redriven is not taken for a copy of its dead letter.
    assert_eq!(header("apizee-event-id"), dead.key);
    assert_eq!(
        dead.event_id,
        format!(
            "{}{}",
            dead.key,
            apizee_bridge::route::DEAD_LETTER_ID_SUFFIX
        )
    );
}

#[tokio::test]
async fn malformed_bodies_are_dead_lettered_on_request_and_failures_keep_the_4xx() {
    let (bridge, sink) =
        bridge_with(&["--dead-letter-topic", "dlq", "--dead-letter-malformed"]).await;
    assert_error(
        &bridge.post("{not json").await,
        400,
        "malformed_json",
        "malformed, dead-lettered",
    );
    wait_until("the dead letter", async || !sink.messages().is_empty()).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload, Bytes::from("{not json"));
    assert!(
        messages[0]
            .headers
            .contains(&("apizee-rejection-reason", "malformed_json".to_owned()))
    );

    // A broker that is down does not change the answer to the sender.
    sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
    assert_error(
        &bridge.post("[1,2").await,
        400,
        "malformed_json",
        "malformed, broker down",
    );
    let failed = r#"apizee_bridge_dead_letters_total{outcome="not_connected"} 1"#;
    wait_until("the failed dead letter to be counted", async || {
        bridge.metrics().await.contains(failed)
    })
    .await;
}

#[tokio::test]
async fn dead_letters_still_queued_at_shutdown_are_published_before_it_ends() {
    let (bridge, sink) = bridge_with(&["--dead-letter-topic", "dlq"]).await;
    sink.set_behaviour(Behaviour::Delay(SLOW_ACK));
    let invalid = r#"{"event":"upsert","time":1,"object":"ticket","objectId":5,"props":{}}"#;
    assert_error(
        &bridge.post(invalid).await,
        422,
        "invalid_envelope",
        "invalid, queued at shutdown",
    );
    assert!(
        sink.messages().is_empty(),
        "answered before it was published"
    );
    bridge.stop().await;
    assert_eq!(
        sink.messages().len(),
        1,
        "the queue was drained at shutdown"
    );
}

/// Reads from a raw connection until it closes or `limit` passes.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn oversized_request_head_is_431_and_publishes_nothing() {
    let (bridge, sink) = bridge_with(&["--max-header-bytes", "8192"]).await;
    let huge = "x".repeat(20 * 1024);
    let mut stream = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!(
        "POST /webhooks HTTP/1.1\r\nhost: x\r\nx-padding: {huge}\r\ncontent-length: {}\r\n\r\n{SPEC_TICKET}",
        SPEC_TICKET.len()
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer to an oversized head"));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(sink.messages().is_empty());
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200, "still serving");
    // hyper answered it, not the handler: it shows in the connection errors.
    wait_for_connection_errors(&bridge, "head_too_large", 1.0).await;

    let mut garbage = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = garbage.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
    let answer = read_until_closed(&mut garbage, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer to a malformed head"));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    wait_for_connection_errors(&bridge, "malformed_head", 1.0).await;
}

async fn wait_for_connection_errors(bridge: &Bridge, kind: &str, expected: f64) {
    let series = format!("apizee_bridge_connection_errors_total{{kind=\"{kind}\"}}");
    wait_until(&format!("{series} to reach {expected}"), async || {
        metric_value(&bridge.metrics().await, &series) == expected
    })
    .await;
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let (bridge, sink) = bridge_with(&["--header-read-timeout", "300ms"]).await;
    // Half a request head, then silence.
    let mut slow = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    slow.write_all(b"POST /webhooks HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "a client that never finished its headers kept its connection"
    );
    // A keep-alive connection that goes quiet after one request.
    let mut idle = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!(
        "POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{SPEC_TICKET}",
        SPEC_TICKET.len()
    );
    idle.write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = read_until_closed(&mut idle, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("an idle keep-alive connection was never closed"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(sink.messages().len(), 1);
    wait_for_connection_errors(&bridge, "header_timeout", 2.0).await;
}

#[tokio::test]
async fn slow_body_is_408_and_publishes_nothing() {
    let (bridge, sink) = bridge_with(&["--body-read-timeout", "300ms"]).await;
    let mut stream = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Announces 100 bytes, sends 10, then stalls.
    stream
        .write_all(b"POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"event\":")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer to a stalled body"))
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_for_a_free_slot() {
    let (bridge, sink) = bridge_with(&["--max-connections", "1"]).await;
    let request = format!(
        "POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{SPEC_TICKET}",
        SPEC_TICKET.len()
    );
    let mut first = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    first
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buffer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("no answer on the first connection"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));

    // The first connection stays open (keep-alive): the second is not
    // served while it does...
    let mut second = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    second
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buffer)).await;
    assert!(early.is_err(), "a connection past the limit was served");
    // ...and is served as soon as the first closes.
    drop(first);
    let read = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("the waiting connection was never served"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    assert_eq!(sink.messages().len(), 2);
}

/// W3C trace context: a request's `traceparent` goes on into its message
/// with the bridge's own span id, its `tracestate` unchanged; a request
/// without one starts a trace.
#[tokio::test]
async fn trace_context_is_carried_into_the_message() {
    let (bridge, sink) = bridge_with(&[]).await;
    let reply = bridge
        .request(
            "POST",
            "/webhooks",
            &[
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "rojo=00f067aa0ba902b7"),
            ],
            Bytes::from_static(SPEC_TICKET.as_bytes()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(bridge.post(SPEC_CONVERSATION).await.status, 200);
    let messages = sink.messages();
    let header = |i: usize, name: &str| {
        messages[i]
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let continued = header(0, "traceparent").unwrap_or_default();
    assert!(
        continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && continued.ends_with("-01"),
        "{continued}"
    );
    assert!(
        !continued.contains("00f067aa0ba902b7"),
        "the bridge's span is its own: {continued}"
    );
    assert_eq!(
        header(0, "tracestate").as_deref(),
        Some("rojo=00f067aa0ba902b7")
    );
    let started = header(1, "traceparent").unwrap_or_default();
    assert_eq!(started.len(), 55, "{started}");
    assert!(
        !started.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{started}"
    );
    assert_eq!(header(1, "tracestate"), None);
}
