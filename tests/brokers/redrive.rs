//! `apizee-bridge redrive`, the binary, against the dead letters a bridge
//! left on nats-server and Apache Kafka: refused under --strict, redriven once the
//! rules no longer refuse them, with their original event id; what still
//! fails stays.

use std::process::Output;

use crate::support::kafka::{header, read_topic, shared};
use crate::support::process::run;
use crate::support::*;
use async_nats::jetstream;

/// A ticket with a state the spec does not list: refused with --strict,
/// published without it.
const NEW_STATE: &str = r#"{"event":"update","time":1575976413,"object":"ticket","objectId":42,"props":{"state":"paused"}}"#;
const BROKEN: &str = r#"{"event":"update"}"#;

async fn redrive(args: &[String]) -> Output {
    let mut all = vec!["redrive".to_owned()];
    all.extend(args.iter().cloned());
    tokio::task::spawn_blocking(move || run(&all))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Posts the two bodies to a bridge started with --strict and the
/// dead-letter topic: both are refused, and dead-lettered.
/// A bridge with `common` and `--strict`, ready: the rules the dead letters
/// are refused by, before redrive runs without them.
async fn strict_bridge(common: &[String]) -> Bridge {
    let strict: Vec<&str> = common
        .iter()
        .map(String::as_str)
        .chain(["--strict"])
        .collect();
    let bridge = Bridge::start(&strict).await;
    bridge.wait_ready().await;
    bridge
}

async fn refuse_both(bridge: &Bridge) -> String {
    let refused = bridge.post(NEW_STATE).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(bridge.post(BROKEN).await.status, 422);
    apizee_bridge::route::event_id(NEW_STATE.as_bytes())
}

#[tokio::test]
async fn nats_dead_letters_that_pass_now_are_republished_once_and_removed() {
    let nats = NatsServer::start(true).await;
    let url = nats.url();
    let common = owned(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-jetstream",
        "--nats-stream",
        "APIZEE",
        "--dead-letter-topic",
        "redrive.dead-letter",
    ]);
    let bridge = strict_bridge(&common).await;
    let id = refuse_both(&bridge).await;
    let js = jetstream::new(nats.client().await);
    wait_until("both dead letters to be stored", async || {
        stream_contents(&js, "APIZEE").await.len() == 2
    })
    .await;
    bridge.stop().await;

    // The rules changed (no --strict): a dry run says what would happen.
    let output = redrive(&common).await;
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("would go to apizee.ticket.update as {id}")),
        "{report}"
    );
    assert!(
        report.contains("(was invalid_envelope): time is required"),
        "{report}"
    );
    assert!(
        report.contains(
            "2 dead letters read: 1 pass now (a dry run: --apply republishes them), 1 still refused"
        ),
        "{report}"
    );
    assert_eq!(
        stream_contents(&js, "APIZEE").await.len(),
        2,
        "a dry run changed the stream"
    );

    let mut apply = common.clone();
    apply.push("--apply".into());
    let output = redrive(&apply).await;
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains("1 pass now (1 republished, 0 failed)"),
        "{report}"
    );
    // The dead letter that passed is gone, the other stays, and the webhook
    // is stored once.
    let contents = stream_contents(&js, "APIZEE").await;
    let bodies: Vec<&[u8]> = contents.iter().map(|(_, body)| body.as_ref()).collect();
    assert_eq!(
        bodies,
        [BROKEN.as_bytes(), NEW_STATE.as_bytes()],
        "{contents:?}"
    );
    let stream = js
        .get_stream("APIZEE")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let last = stream
        .get_last_raw_message_by_subject("apizee.ticket.update")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        last.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        last.headers.get("apizee-event-id").map(|v| v.as_str()),
        Some(id.as_str())
    );

    // Run again: the redriven one is gone from the dead letters.
    let output = redrive(&apply).await;
    let report = text(&output);
    assert!(
        report.contains("1 dead letters read: 0 pass now"),
        "{report}"
    );
    assert_eq!(stream_contents(&js, "APIZEE").await.len(), 2);
}

#[tokio::test]
async fn kafka_dead_letters_are_republished_and_after_skips_them_next_time() {
    // The broker this binary shares, with topics of this test's own.
    let brokers = shared().await.bootstrap();
    let common = owned(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        "redrive",
        "--kafka-create-topics",
        "--kafka-replication-factor",
        "1",
        "--kafka-partitions",
        "1",
        "--dead-letter-topic",
        "redrive.dead-letter",
    ]);
    let bridge = strict_bridge(&common).await;
    let id = refuse_both(&bridge).await;
    let dead = brokers.clone();
    let letters = tokio::task::spawn_blocking(move || read_topic(&dead, "redrive.dead-letter", 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(letters.len(), 2);
    bridge.stop().await;

    let mut apply = common.clone();
    apply.push("--apply".into());
    let output = redrive(&apply).await;
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("redriven 0:0: to redrive.ticket.update as {id}")),
        "{report}"
    );
    assert!(
        report.contains("refused  0:1 (was invalid_envelope)"),
        "{report}"
    );
    assert!(
        report.contains("read up to 0:1: --after 0:1 skips them next time"),
        "{report}"
    );
    let source = brokers.clone();
    let republished =
        tokio::task::spawn_blocking(move || read_topic(&source, "redrive.ticket.update", 1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(republished.len(), 1);
    assert_eq!(
        rdkafka::Message::payload(&republished[0]),
        Some(NEW_STATE.as_bytes())
    );
    assert_eq!(
        header(&republished[0], "apizee-event-id"),
        Some(id.as_str())
    );

    let mut again = apply.clone();
    again.extend(["--after".to_owned(), "0:1".to_owned()]);
    let output = redrive(&again).await;
    assert!(
        text(&output).contains("0 dead letters read"),
        "{}",
        text(&output)
    );
}
