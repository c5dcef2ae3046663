//! `--cloudevents` end to end: the bridge publishes the spec samples to
//! Apache Kafka and to nats-server (JetStream), and the official
//! CloudEvents SDK for Python reads them back (`read_cloudevents.py` beside this
//! file says how, per binding) and checks every attribute and that the data
//! is the body posted, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::kafka::shared;
use crate::support::process::{RUN_DEADLINE, Watched};
use crate::support::*;
use async_nats::jetstream;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// A uid that the NATS binding must percent-encode (a space, non-ASCII) and
/// the Kafka binding passes as UTF-8.
const UID_TO_ENCODE: &str =
    r#"{"event":"create","time":1700000000,"object":"conversation","objectId":"Zoë 7","props":{}}"#;

/// What the SDK must read back for one posted webhook.
struct Posted {
    body: &'static str,
    /// The topic after `{prefix}.`.
    topic: &'static str,
    kind: &'static str,
    subject: &'static str,
    time: i64,
}

const POSTED: [Posted; 3] = [
    Posted {
        body: SPEC_TICKET,
        topic: "ticket.update",
        kind: "com.apizee.ticket.update",
        subject: "100",
        time: 1575976413,
    },
    Posted {
        body: SPEC_CONVERSATION,
        topic: "conversation.update",
        kind: "com.apizee.conversation.update",
        subject: "734e3a7b-eb17-4d3f-901d-bcff178b",
        time: 1632144306,
    },
    Posted {
        body: UID_TO_ENCODE,
        topic: "conversation.create",
        kind: "com.apizee.conversation.create",
        subject: "Zoë 7",
        time: 1700000000,
    },
];

/// The pinned SDK's virtual environment, made by `.ci/tools/cloudevents.sh`
/// (which `.ci/test` runs); `$CLOUDEVENTS_TOOLS` names another.
fn python() -> PathBuf {
    let dir = std::env::var_os("CLOUDEVENTS_TOOLS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/cloudevents"),
        PathBuf::from,
    );
    let python = dir.join("bin/python");
    if !python.is_file() {
        missing_tool(format!(
            "the CloudEvents SDK (PyPI cloudevents and confluent-kafka, pinned) not found in \
             {}: install it with `bash .ci/tools/cloudevents.sh`, or set CLOUDEVENTS_TOOLS",
            dir.display()
        ));
    }
    python
}

/// Runs `read_cloudevents.py` with `args` and `cases` on stdin; its `ok` lines.
async fn read_back_with_the_sdk(args: Vec<String>, cases: Value) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/brokers/read_cloudevents.py");
    let python = python();
    let mut command = Command::new(&python);
    command.arg(&script).args(&args);
    let output = Watched::spawn_with_input(&mut command, cases.to_string())
        .finish(RUN_DEADLINE)
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the CloudEvents SDK refused what the bridge published:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Posts every sample to a bridge whose topics start with `prefix`; the
/// `expect` of each, with the id the bridge gave.
async fn post_all(bridge: &Bridge, prefix: &str, source: &str) -> Vec<Value> {
    let mut expected = Vec::new();
    for posted in &POSTED {
        let reply = bridge.post(posted.body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["topic"], format!("{prefix}.{}", posted.topic));
        expected.push(json!({
            "id": body["id"],
            "type": posted.kind,
            "source": source,
            "time": posted.time,
            "subject": posted.subject,
            "data": BASE64.encode(posted.body),
        }));
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_messages_are_binary_mode_cloudevents() {
    // The broker this binary shares, with topics of this test's own.
    const PREFIX: &str = "cloudevents";
    let bootstrap = shared().await.bootstrap();
    let source = "urn:apizee:acme";
    let bridge = Bridge::start(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        &bootstrap,
        "--topic-prefix",
        PREFIX,
        "--kafka-create-topics",
        "--kafka-replication-factor",
        "1",
        "--cloudevents",
        "--cloudevents-source",
        source,
    ])
    .await;
    bridge.wait_ready().await;

    let expected = post_all(&bridge, PREFIX, source).await;
    let cases: Vec<Value> = POSTED
        .iter()
        .zip(expected)
        .map(|(posted, expect)| json!({"topic": format!("{PREFIX}.{}", posted.topic), "expect": expect}))
        .collect();
    let ok = read_back_with_the_sdk(vec!["kafka".into(), bootstrap], Value::from(cases)).await;
    assert_eq!(ok.len(), POSTED.len(), "{ok:?}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_messages_are_binary_mode_cloudevents() {
    let nats = NatsServer::start(true).await;
    let url = nats.url();
    let bridge = Bridge::start(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-jetstream",
        "--nats-stream",
        "WEBHOOKS",
        "--cloudevents",
    ])
    .await;
    bridge.wait_ready().await;

    let expected = post_all(&bridge, "apizee", "/apizee-bridge").await;
    let stream = jetstream::new(nats.client().await)
        .get_stream("WEBHOOKS")
        .await
        .unwrap_or_else(|e| panic!("the bridge did not create the stream: {e}"));
    let mut cases = Vec::new();
    for (sequence, expect) in (1..).zip(expected) {
        let stored = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("stream message {sequence}: {e}"));
        let headers: Vec<(&str, &str)> = stored
            .headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (AsRef::<str>::as_ref(name), v.as_str()))
            })
            .collect();
        cases.push(json!({
            "headers": headers,
            "payload": BASE64.encode(&stored.payload),
            "expect": expect,
        }));
    }
    let ok = read_back_with_the_sdk(vec!["nats".into()], Value::from(cases)).await;
    assert_eq!(ok.len(), POSTED.len(), "{ok:?}");
    bridge.stop().await;
}
