//! `apizee-bridge check` against real brokers: the binary, run to
//! completion, reaching nats-server 2.15 and Apache Kafka as serving would. Each
//! case checks the lines that matter, the exit status, and that the check
//! changed nothing on the broker.

use std::process::Output;

use crate::support::kafka::{create_topics, shared};
use crate::support::process::run;
use crate::support::*;

/// Runs `apizee-bridge check` off the runtime's thread (it blocks until the
/// broker answers or its --startup-timeout passes).
async fn check(args: &[&str]) -> Output {
    let mut all = vec!["check".to_owned(), "--startup-timeout".into(), "3s".into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || run(&all))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The report has a line starting with `start`.
#[track_caller]
fn has_line(output: &Output, start: &str) -> String {
    let lines = lines(output);
    lines
        .iter()
        .find(|l| l.starts_with(start))
        .cloned()
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{}", lines.join("\n")))
}

#[track_caller]
fn exit_code(output: &Output, expected: i32) {
    assert_eq!(
        output.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn nats_with_a_stream_to_create_passes_and_creates_nothing() {
    let nats = NatsServer::start(true).await;
    let url = nats.url();
    let output = check(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-jetstream",
        "--nats-stream",
        "WEBHOOKS",
        "--dead-letter-topic",
        "apizee.dead-letter",
        "--auth-header",
        "X-Apizee-Secret",
        "--auth-token",
        "s3cret",
    ])
    .await;
    exit_code(&output, 0);
    has_line(&output, "ok    configuration: sink nats");
    has_line(&output, "ok    auth: shared secret in x-apizee-secret");
    has_line(&output, "ok    nats: connected to");
    has_line(&output, "ok    jetstream: enabled (0 streams");
    has_line(
        &output,
        r#"ok    stream WEBHOOKS: missing; serving creates it with subjects ["apizee.>"]"#,
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("s3cret"));
    let js = async_nats::jetstream::new(nats.client().await);
    assert!(
        js.get_stream("WEBHOOKS").await.is_err(),
        "check made the stream"
    );
}

#[tokio::test]
async fn a_stream_that_misses_the_dead_letter_subject_fails_naming_it() {
    let nats = NatsServer::start(true).await;
    let js = async_nats::jetstream::new(nats.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HAND".into(),
        subjects: vec!["apizee.*.*".into()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let url = nats.url();
    let args = [
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-jetstream",
        "--nats-stream",
        "HAND",
        "--dead-letter-topic",
        "dead.letters",
    ];
    let output = check(&args).await;
    exit_code(&output, 1);
    has_line(
        &output,
        "ok    stream HAND: exists and captures every subject",
    );
    let line = has_line(
        &output,
        "FAIL  stream HAND: does not capture the dead-letter subject",
    );
    assert!(line.contains("dead.letters"), "{line}");
    // Without --nats-stream, the stream that captures each subject is found
    // by subject; the dead-letter subject has none.
    let output = check(
        &args[..5]
            .iter()
            .chain(&args[7..])
            .copied()
            .collect::<Vec<_>>(),
    )
    .await;
    exit_code(&output, 1);
    let line = has_line(&output, "FAIL  streams: no stream captures dead.letters");
    assert!(!line.contains("apizee.ticket"), "{line}");
}

#[tokio::test]
async fn a_refused_token_and_a_server_that_is_not_there_fail() {
    let nats = NatsServer::start_with_auth(true, ServerAuth::Token("right".into())).await;
    let url = nats.url();
    let output = check(&[
        "--sink",
        "nats",
        "--nats-url",
        &url,
        "--nats-token",
        "wrong",
    ])
    .await;
    exit_code(&output, 1);
    let line = has_line(&output, "FAIL  nats: cannot connect to");
    assert!(line.to_lowercase().contains("authorization"), "{line}");
    assert!(!line.contains("wrong"), "the token is echoed: {line}");

    let nobody = format!("nats://127.0.0.1:{}", free_port());
    let output = check(&["--sink", "nats", "--nats-url", &nobody]).await;
    exit_code(&output, 1);
    has_line(&output, "FAIL  nats: cannot connect to");
}

#[tokio::test]
async fn skip_broker_checks_the_spool_and_not_the_broker() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().to_string_lossy().into_owned();
    let nobody = format!("nats://127.0.0.1:{}", free_port());
    let output = check(&[
        "--skip-broker",
        "--sink",
        "nats",
        "--nats-url",
        &nobody,
        "--spool-dir",
        &spool,
    ])
    .await;
    exit_code(&output, 0);
    has_line(&output, "ok    spool: ");
    has_line(&output, "ok    broker: not checked (--skip-broker)");
    // A bad flag is exit 2, as serving exits, with the line that names it.
    let output = check(&[
        "--skip-broker",
        "--spool-max-bytes",
        "0",
        "--spool-dir",
        &spool,
    ])
    .await;
    exit_code(&output, 2);
    has_line(&output, "FAIL  configuration: invalid --spool-max-bytes");
}

#[tokio::test]
async fn kafka_topics_are_found_or_said_to_be_created() {
    // The broker this binary shares: the check's topics have a prefix of
    // their own.
    let brokers = shared().await.bootstrap();
    let base = [
        "--sink",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        "check",
    ];
    let dead_letter = ["--dead-letter-topic", "check.dead-letter"];
    let all: Vec<&str> = base.iter().chain(&dead_letter).copied().collect();

    let created: Vec<&str> = all
        .iter()
        .copied()
        .chain(["--kafka-create-topics", "--kafka-replication-factor", "1"])
        .collect();
    let output = check(&created).await;
    exit_code(&output, 0);
    has_line(&output, "ok    kafka: reached 1 broker(s)");
    has_line(
        &output,
        "ok    topics: 15 of 15 missing, created at start-up (--kafka-create-topics)",
    );
    has_line(
        &output,
        "ok    dead-letter topic: 1 of 1 missing, created at start-up",
    );

    // Made by hand, all but the dead-letter topic: a warning, not a failure,
    // since a cluster may create topics on demand.
    let topics: Vec<String> =
        apizee_bridge::route::TopicTemplate::parse(apizee_bridge::route::DEFAULT_TEMPLATE, "check")
            .ok()
            .and_then(|t| t.all_topics())
            .unwrap_or_else(|| panic!("the default template's topics"));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    create_topics(&brokers, &names, 1, 1).await;
    let output = check(&all).await;
    exit_code(&output, 0);
    has_line(&output, "ok    topics: 15 exist");
    let line = has_line(
        &output,
        "warn  dead-letter topic: 1 of 1 missing: check.dead-letter",
    );
    assert!(line.contains("--kafka-create-topics"), "{line}");
}

#[tokio::test]
async fn kafka_that_does_not_answer_fails() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let output = check(&["--sink", "kafka", "--kafka-brokers", &nobody]).await;
    exit_code(&output, 1);
    has_line(&output, "FAIL  kafka: no metadata from");
}
