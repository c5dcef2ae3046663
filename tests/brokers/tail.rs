//! `apizee-bridge tail`, the binary, reading what a bridge publishes: from
//! nats-server (webhooks and dead letters, a pattern) and from Apache Kafka, with
//! headers and bodies as the broker holds them.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::kafka::shared;
use crate::support::process::{BINARY, Watched};
use crate::support::*;

/// `apizee-bridge tail ARGS`, once it says it is reading.
async fn tail(args: &[&str]) -> Watched {
    let mut child = Watched::spawn(Command::new(BINARY).arg("tail").args(args).env_clear());
    let said = child
        .stderr_line(READY_DEADLINE, |line| {
            line.starts_with("apizee-bridge tail: ")
        })
        .await;
    assert!(
        said.starts_with("apizee-bridge tail: reading "),
        "tail did not start reading: {said}"
    );
    child
}

/// Everything tail printed, once it has read its `--count` and exited.
async fn exited(child: Watched) -> Output {
    child.finish(READY_DEADLINE).await
}

/// What tail printed, one JSON object per message, once it exits.
async fn printed(child: Watched) -> Vec<Value> {
    let output = exited(child).await;
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["headers"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
}

const MEDIA: &str =
    r#"{"event":"update","time":1575976413,"object":"media","objectId":7,"props":{}}"#;

#[tokio::test]
async fn nats_webhooks_and_dead_letters_with_their_headers() {
    let nats = NatsServer::start(true).await;
    let url = nats.url();
    let bridge = Bridge::start(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-jetstream",
        "--nats-stream",
        "APIZEE",
        "--dead-letter-topic",
        "apizee.dead-letter",
    ])
    .await;
    bridge.wait_ready().await;
    let reader = tail(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--dead-letter-topic",
        "apizee.dead-letter",
        "--format",
        "json",
        "--count",
        "2",
    ])
    .await;
    let accepted = bridge.post(SPEC_TICKET).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let refused = bridge.post(r#"{"event":"update"}"#).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let messages = printed(reader).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let webhook = &messages[0];
    assert_eq!(webhook["topic"], "apizee.ticket.update");
    assert_eq!(webhook["payload"], SPEC_TICKET);
    assert_eq!(
        header(webhook, "apizee-event-id"),
        accepted.json()["id"].as_str()
    );
    assert_eq!(
        header(webhook, "Nats-Msg-Id"),
        accepted.json()["id"].as_str()
    );
    // No traceparent on the request: the bridge started a trace.
    let started = header(webhook, "traceparent").unwrap_or_default();
    assert!(
        started.starts_with("00-") && started.len() == 55,
        "{started}"
    );
    let dead = &messages[1];
    assert_eq!(dead["topic"], "apizee.dead-letter");
    assert_eq!(dead["payload"], r#"{"event":"update"}"#);
    assert_eq!(
        header(dead, "apizee-rejection-reason"),
        Some("invalid_envelope")
    );
}

#[tokio::test]
async fn a_pattern_prints_only_what_it_selects_as_text() {
    let nats = NatsServer::start(false).await;
    let url = nats.url();
    let bridge = Bridge::start(&["--sink", "nats", "--nats-url", &url]).await;
    bridge.wait_ready().await;
    let reader = tail(&[
        "apizee.media.*",
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--count",
        "1",
    ])
    .await;
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);
    assert_eq!(bridge.post(MEDIA).await.status, 200);
    let output = exited(reader).await;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("apizee.media.update"), "{text}");
    assert!(text.contains("\n  apizee-object-id: 7\n"), "{text}");
    assert!(text.contains(MEDIA), "{text}");
    assert!(!text.contains("ticket"), "{text}");
}

/// `>` also matches the probe tail publishes to know its subscriptions are
/// in place: what it prints first is still the bridge's message.
#[tokio::test]
async fn every_subject_prints_the_webhook_not_the_probe() {
    let nats = NatsServer::start(false).await;
    let url = nats.url();
    let bridge = Bridge::start(&["--sink", "nats", "--nats-url", &url]).await;
    bridge.wait_ready().await;
    let reader = tail(&[">", "--sink", "nats", "--nats-url", &url, "--count", "1"]).await;
    assert_eq!(bridge.post(MEDIA).await.status, 200);
    let output = exited(reader).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().next(), Some("apizee.media.update"), "{text}");
}

#[tokio::test]
async fn kafka_keys_headers_and_bodies() {
    // The broker this binary shares, with topics of this test's own.
    let brokers = shared().await.bootstrap();
    let bridge = Bridge::start(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        "tail",
        "--kafka-create-topics",
        "--kafka-replication-factor",
        "1",
        "--kafka-partitions",
        "1",
    ])
    .await;
    bridge.wait_ready().await;
    let reader = tail(&[
        "tail.ticket.*",
        "--sink",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--format",
        "json",
        "--count",
        "1",
    ])
    .await;
    let accepted = bridge
        .request(
            "POST",
            "/webhooks",
            &[
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
            bytes::Bytes::from_static(SPEC_TICKET.as_bytes()),
        )
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let messages = printed(reader).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    // The sender's trace goes on through Kafka, from the bridge's span.
    let continued = header(&messages[0], "traceparent").unwrap_or_default();
    assert!(
        continued.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{continued}"
    );
    assert!(!continued.contains("b7ad6b7169203331"), "{continued}");
    assert_eq!(
        header(&messages[0], "tracestate"),
        Some("congo=t61rcWkgMzE")
    );
    assert_eq!(messages[0]["topic"], "tail.ticket.update");
    assert_eq!(messages[0]["key"], "100");
    assert_eq!(messages[0]["payload"], SPEC_TICKET);
    assert_eq!(
        header(&messages[0], "apizee-event-id"),
        accepted.json()["id"].as_str()
    );
    // A pattern that selects no topic says so and exits 1.
    let output = Watched::spawn(
        Command::new(BINARY)
            .args([
                "tail",
                "nowhere.*",
                "--sink",
                "kafka",
                "--kafka-brokers",
                &brokers,
            ])
            .env_clear(),
    )
    .finish(READY_DEADLINE)
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no topic on"),
        "{output:?}"
    );
}
