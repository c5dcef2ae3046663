//! The consumers in `examples/`, run as a downstream team would run them,
//! against a bridge publishing to JetStream and to Apache Kafka: a retried webhook
//! delivered twice is processed once, and a durable consumer or a group
//! resumes after its last acknowledged message.

use std::path::PathBuf;
use std::process::Output;

use crate::support::kafka::shared;
use crate::support::process::{BINARY, Watched};
use crate::support::*;
use async_nats::jetstream;

/// An example binary, built by `cargo test` beside the bridge's.
fn example(name: &str) -> PathBuf {
    let path = std::path::Path::new(BINARY)
        .parent()
        .map(|dir| dir.join("examples").join(name))
        .unwrap_or_else(|| panic!("no directory for {BINARY}"));
    assert!(
        path.exists(),
        "{} is not built: run cargo test, which builds the examples",
        path.display()
    );
    path
}

async fn run_example(name: &str, args: Vec<String>) -> Output {
    let path = example(name);
    let output = Watched::spawn(std::process::Command::new(&path).args(&args).env_clear())
        .finish(READY_DEADLINE)
        .await;
    assert!(output.status.success(), "{name}: {output:?}");
    output
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn jetstream_consumer_processes_a_retried_webhook_once_and_resumes() {
    let nats = NatsServer::start(true).await;
    let js = jetstream::new(nats.client().await);
    // A short duplicate window, so a retry after it is stored again, as one
    // after 2 minutes would be with the default window.
    js.create_stream(jetstream::stream::Config {
        name: "APIZEE".into(),
        subjects: vec!["apizee.>".into()],
        duplicate_window: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let url = nats.url();
    let bridge = Bridge::start(&["--sink", "nats", "--nats-url", &url, "--nats-jetstream"]).await;
    bridge.wait_ready().await;
    let first = bridge.post(SPEC_TICKET).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap_or_default().to_owned();
    wait_until(
        "the platform's retry to be stored a second time",
        async || {
            assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);
            stream_contents(&js, "APIZEE").await.len() >= 2
        },
    )
    .await;
    let stored = stream_contents(&js, "APIZEE").await.len();

    let args = |count: usize| {
        vec![
            "--nats-url".to_owned(),
            url.clone(),
            "--stream".into(),
            "APIZEE".into(),
            "--durable".into(),
            "tickets".into(),
            "--subject".into(),
            "apizee.ticket.>".into(),
            "--count".into(),
            count.to_string(),
        ]
    };
    let output = run_example("consumer_nats", args(stored)).await;
    let read = lines(&output);
    assert_eq!(
        read[0],
        format!("processed {id} apizee.ticket.update"),
        "{read:?}"
    );
    assert!(
        read[1..]
            .iter()
            .all(|l| *l == format!("duplicate {id} apizee.ticket.update")),
        "{read:?}"
    );

    // Everything read was acknowledged: the durable consumer resumes after it.
    let created = bridge
        .post(r#"{"event":"create","time":1,"object":"ticket","objectId":7,"props":{}}"#)
        .await;
    let next = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let output = run_example("consumer_nats", args(1)).await;
    assert_eq!(
        lines(&output),
        [format!("processed {next} apizee.ticket.create")]
    );
}

#[tokio::test]
async fn kafka_group_consumer_processes_a_retried_webhook_once_and_resumes() {
    // The broker this binary shares, with topics of this test's own.
    let brokers = shared().await.bootstrap();
    let bridge = Bridge::start(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        "consumers",
        "--kafka-create-topics",
        "--kafka-partitions",
        "1",
        "--kafka-replication-factor",
        "1",
    ])
    .await;
    bridge.wait_ready().await;
    // The platform retries: Kafka keeps both copies.
    let first = bridge.post(SPEC_TICKET).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);
    let id = first.json()["id"].as_str().unwrap_or_default().to_owned();
    let args = |count: usize| {
        vec![
            "--brokers".to_owned(),
            brokers.clone(),
            "--group".into(),
            "tickets".into(),
            "--topic".into(),
            "consumers.ticket.update".into(),
            "--count".into(),
            count.to_string(),
        ]
    };
    let output = run_example("consumer_kafka", args(2)).await;
    assert_eq!(
        lines(&output),
        [
            format!("processed {id} consumers.ticket.update"),
            format!("duplicate {id} consumers.ticket.update")
        ]
    );
    // The group committed both: it resumes after them.
    let later = bridge
        .post(r#"{"event":"update","time":2,"object":"ticket","objectId":7,"props":{}}"#)
        .await;
    let next = later.json()["id"].as_str().unwrap_or_default().to_owned();
    let output = run_example("consumer_kafka", args(1)).await;
    assert_eq!(
        lines(&output),
        [format!("processed {next} consumers.ticket.update")]
    );
}
