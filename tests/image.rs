//! The container image, built and run for real: `deploy/docker/Dockerfile`
//! is built with podman (runc) from base images that
//! `deploy/docker/base-images.sh` makes locally (nothing is pulled), then
//! the image runs with host networking against a real nats-server: a
//! webhook posted through it is read back from the stream, `/metrics` is
//! scraped, the process runs as uid 65532, and SIGTERM ends it with 0.
//!
//! Needs root, podman, runc and debootstrap (`bash .ci/run` installs them).
//! Cold, the base images take about a minute and the build about ten
//! (every dependency compiled in release mode); warm, podman's layer cache
//! makes both a few seconds.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use async_nats::jetstream;
use support::*;

const IMAGE: &str = "localhost/apizee-bridge:test";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// podman with runc (crun fails on this machine's cgroups) and the limits
/// a container needs here.
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "/usr/sbin/runc"])
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (bash .ci/run installs it): {e}"))
}

fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=1000:1000",
];

/// A running container, removed (with its process) when dropped.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_delivers_webhooks_as_a_non_root_user() {
    let started = Instant::now();
    let base = Command::new("bash")
        .arg("deploy/docker/base-images.sh")
        .env("ENGINE", "podman --runtime /usr/sbin/runc")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run base-images.sh: {e}"));
    assert!(
        base.status.success(),
        "deploy/docker/base-images.sh failed:\n{}{}",
        String::from_utf8_lossy(&base.stdout),
        String::from_utf8_lossy(&base.stderr)
    );
    let base_images = started.elapsed();

    let started = Instant::now();
    let mut build = vec![
        "build",
        "--network",
        "host",
        "--pull=never",
        "--file",
        "deploy/docker/Dockerfile",
        "--tag",
        IMAGE,
    ];
    build.extend(LIMITS);
    build.push(".");
    podman_ok(&build);
    let built = started.elapsed();
    println!("base images {base_images:?}, image build {built:?}");

    // As the Dockerfile says: uid 65532, and the OCI labels, the version
    // being Cargo.toml's.
    assert_eq!(
        podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", IMAGE]),
        "65532:65532"
    );
    let labels: serde_json::Value = serde_json::from_str(&podman_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Labels}}",
        IMAGE,
    ]))
    .unwrap_or_else(|e| panic!("labels: {e}"));
    for key in ["title", "description", "version", "revision", "created"] {
        assert!(
            labels
                .get(format!("org.opencontainers.image.{key}"))
                .is_some(),
            "no org.opencontainers.image.{key} label: {labels}"
        );
    }
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    let nats = NatsServer::start(true).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let container = Container {
        name: format!("apizee-bridge-test-{}", free_port()),
    };
    let env = [
        format!("APIZEE_BRIDGE_LISTEN={listen}"),
        format!("APIZEE_BRIDGE_METRICS_LISTEN={metrics}"),
        "APIZEE_BRIDGE_SINK=nats".to_owned(),
        format!("APIZEE_BRIDGE_NATS_URL={}", nats.url()),
        "APIZEE_BRIDGE_NATS_JETSTREAM=true".to_owned(),
        "APIZEE_BRIDGE_NATS_STREAM=WEBHOOKS".to_owned(),
        "APIZEE_BRIDGE_DRAIN_DELAY=1s".to_owned(),
    ];
    let mut run = vec![
        "run",
        "--detach",
        "--name",
        &container.name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
    ];
    run.extend(LIMITS);
    for variable in &env {
        run.extend(["--env", variable]);
    }
    run.push(IMAGE);
    podman_ok(&run);

    let addr = listen.parse().unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "the container's bridge to be ready",
        async || matches!(get(addr, "/readyz").await, Ok(r) if r.status == 200),
    )
    .await;
    let reply = request(
        addr,
        "POST",
        "/webhooks",
        &[("content-type", "application/JSON")],
        bytes::Bytes::from_static(SPEC_TICKET.as_bytes()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();

    let js = jetstream::new(nats.client().await);
    let stream = js
        .get_stream("WEBHOOKS")
        .await
        .unwrap_or_else(|e| panic!("the container made no stream: {e}"));
    let stored = stream
        .get_raw_message(1)
        .await
        .unwrap_or_else(|e| panic!("message 1: {e}"));
    assert_eq!(stored.payload, SPEC_TICKET.as_bytes());
    assert_eq!(stored.subject.as_str(), "apizee.ticket.update");
    assert_eq!(
        stored
            .headers
            .get("apizee-event-id")
            .map(|v| v.as_str().to_owned()),
        Some(id)
    );

    let scraped = get(
        metrics.parse().unwrap_or_else(|e| panic!("{e}")),
        "/metrics",
    )
    .await
    .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .text()
            .contains(r#"apizee_bridge_publishes_total{outcome="ok",sink="nats"} 1"#),
        "{}",
        scraped.text()
    );

    // The process itself, seen from the host, is not root.
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &container.name]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .unwrap_or_else(|| panic!("no Uid line: {status}"));
    assert!(uid.split_whitespace().all(|id| id == "65532"), "uids {uid}");

    // SIGTERM (STOPSIGNAL): the drain, then exit 0.
    podman_ok(&["stop", "--time", "30", &container.name]);
    assert_eq!(
        podman_ok(&[
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &container.name
        ]),
        "0"
    );
}
