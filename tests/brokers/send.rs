//! `apizee-bridge send`, the binary, against a running bridge: signed as
//! the bridge's flags say it checks, each answer printed, and what was
//! accepted read back from JetStream byte for byte.

use std::process::Output;
use std::sync::Arc;

use crate::support::answers::bridge_with;
use crate::support::process::{BINARY, Watched};
use crate::support::tls::Pki;
use crate::support::*;
use apizee_bridge::commands::send::SAMPLES;
use async_nats::jetstream;

/// Runs `apizee-bridge send ARGS` to completion, `stdin` on its input;
/// a hang fails the test with what it printed.
async fn send(args: Vec<String>, stdin: &'static [u8]) -> Output {
    let mut command = std::process::Command::new(BINARY);
    command.arg("send").args(&args).env_clear();
    Watched::spawn_with_input(&mut command, stdin)
        .finish(READY_DEADLINE)
        .await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_owned()).collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn built_in_samples_reach_jetstream_through_the_bridge() {
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
        "--auth-header",
        "X-Apizee-Secret",
        "--auth-token",
        "old,current",
    ])
    .await;
    bridge.wait_ready().await;
    let webhooks = bridge.url("/webhooks");
    let output = send(
        args(&[
            "--url",
            &webhooks,
            "--auth-header",
            "X-Apizee-Secret",
            "--auth-token",
            "current",
        ]),
        b"",
    )
    .await;
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), SAMPLES.len(), "{printed}");
    for (line, (object, _)) in lines.iter().zip(SAMPLES) {
        let expected = format!(
            "200 {} (built-in): {{\"topic\":\"apizee.{}.",
            object.as_str(),
            object.as_str()
        );
        assert!(line.starts_with(&expected), "{line}");
    }
    let js = jetstream::new(nats.client().await);
    let stored = stream_contents(&js, "APIZEE").await;
    // Read back by subject, not in the order sent.
    let mut bodies: Vec<&[u8]> = stored.iter().map(|(_, payload)| payload.as_ref()).collect();
    let mut samples: Vec<&[u8]> = SAMPLES.iter().map(|(_, body)| body.as_bytes()).collect();
    bodies.sort();
    samples.sort();
    assert_eq!(bodies, samples, "each sample stored once, byte for byte");
    assert!(
        !printed.contains("current"),
        "the token is echoed: {printed}"
    );

    // Without the token: 401, printed, and the exit status says so.
    let output = send(args(&["--url", &webhooks]), b"").await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).starts_with("401 ticket (built-in): {\"error\":\"unauthorized\""),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn hmac_with_a_timestamp_and_basic_sign_files_and_standard_input() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("ticket.json");
    std::fs::write(&file, SPEC_TICKET).unwrap_or_else(|e| panic!("{e}"));
    let file = file.to_string_lossy().into_owned();
    let hmac = [
        "--hmac-secret",
        "k1",
        "--hmac-timestamp-header",
        "X-Timestamp",
        "--hmac-encoding",
        "base64",
    ];
    let (bridge, sink) = bridge_with(&hmac).await;
    let webhooks = bridge.url("/webhooks");
    let mut with = args(&["--url", &webhooks]);
    with.extend(args(&hmac));
    with.extend([file.clone(), "-".into()]);
    let output = send(with, SPEC_CONVERSATION.as_bytes()).await;
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed
            .lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("200 {file}: "))),
        "{printed}"
    );
    assert!(
        printed
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("200 -: ")),
        "{printed}"
    );
    let payloads: Vec<Vec<u8>> = sink.messages().iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        [SPEC_TICKET.as_bytes(), SPEC_CONVERSATION.as_bytes()]
    );

    let mut wrong = args(&[
        "--url",
        &webhooks,
        "--hmac-secret",
        "other",
        "--hmac-timestamp-header",
        "X-Timestamp",
        "--hmac-encoding",
        "base64",
    ]);
    wrong.push(file.clone());
    let output = send(wrong, b"").await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).starts_with(&format!("401 {file}: ")),
        "{}",
        stdout(&output)
    );

    let (bridge, sink) = bridge_with(&["--basic-auth", "apizee:pa:ss"]).await;
    let output = send(
        args(&[
            "--url",
            &bridge.url("/webhooks"),
            "--basic-auth",
            "apizee:pa:ss",
            &file,
        ]),
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stdout(&output));
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn https_with_the_bridges_ca() {
    let pki = Pki::new("send test CA");
    let flags = pki.install(&pki.server("bridge"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let sink = Arc::new(apizee_bridge::sink::memory::MemorySink::new());
    let bridge = crate::support::tls::start_bridge(&flags, sink.clone()).await;
    let ca = pki
        .write("ca.pem", &pki.ca_pem())
        .to_string_lossy()
        .into_owned();
    let url = format!("https://localhost:{}/webhooks", bridge.addr.port());
    let output = send(args(&["--url", &url, "--ca-file", &ca]), b"").await;
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(sink.messages().len(), SAMPLES.len());
    // Without the CA: refused before anything is sent, exit 2.
    let output = send(args(&["--url", &url]), b"").await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ca-file"));
}
