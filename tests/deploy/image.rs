//! The container image, built and run for real: `deploy/docker/Dockerfile`
//! is built with podman (runc) from base images that
//! `deploy/docker/base-images.sh` makes locally (nothing is pulled), then
//! the image runs with host networking against a real nats-server: a
//! webhook posted through it is read back from the stream, `/metrics` is
//! scraped, the process runs as uid 65532, and SIGTERM ends it with 0.
//!
//! Needs root, podman, runc and debootstrap (`bash .ci/test` installs them).
//! Cold, the base images take about a minute and the build about ten
//! (every dependency compiled in release mode); warm, podman's layer cache
//! makes both a few seconds.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::process::{output_within, try_output_within};
use crate::support::*;
use async_nats::jetstream;

const IMAGE: &str = "localhost/apizee-bridge:test";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// How long one podman command or the base images' script may take: a hang
/// guard, above a cold build of the image (about ten minutes on 2 busy
/// cores: every dependency compiled in release mode).
const PODMAN_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// `podman --runtime /usr/sbin/runc ARGS` (crun fails on this machine's
/// cgroups), within [`PODMAN_DEADLINE`], or the message a test fails with.
fn try_podman(args: &[&str]) -> Result<Output, String> {
    try_output_within(
        Command::new("podman")
            .args(["--runtime", "/usr/sbin/runc"])
            .args(args)
            .current_dir(root()),
        PODMAN_DEADLINE,
    )
    .map_err(|e| format!("{e}\n(bash .ci/test installs podman)"))
}

fn podman(args: &[&str]) -> Output {
    try_podman(args).unwrap_or_else(|e| panic!("{e}"))
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
        // A failing test shows what the bridge in the container said.
        // Never a panic here: one while the test unwinds would abort it.
        if std::thread::panicking() {
            match try_podman(&["logs", &self.name]) {
                Ok(logs) => eprintln!(
                    "container {} logged:\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                ),
                Err(e) => eprintln!("no logs of container {}: {e}", self.name),
            }
        }
        if let Err(e) = try_podman(&["rm", "--force", "--time", "0", &self.name]) {
            eprintln!("container {} not removed: {e}", self.name);
        }
    }
}

/// Every file the engine puts in a build context of the repository, as a
/// container built from that context lists it: the engine's own ignore
/// rules, applied to `ignorefile` (none: the context's .dockerignore).
fn build_context(builder: &str, ignorefile: Option<&str>) -> BTreeSet<String> {
    const PROBE: &str = "localhost/apizee-bridge-context-probe:test";
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let containerfile = dir.path().join("Containerfile");
    std::fs::write(&containerfile, format!("FROM {builder}\nCOPY . /context\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let containerfile = containerfile.display().to_string();
    let mut build = vec!["build", "--pull=never", "--file", &containerfile];
    if let Some(ignorefile) = ignorefile {
        build.extend(["--ignorefile", ignorefile]);
    }
    build.extend(LIMITS);
    build.extend(["--tag", PROBE, "."]);
    podman_ok(&build);
    let mut run = vec!["run", "--rm", "--network", "none"];
    run.extend(LIMITS);
    run.extend([PROBE, "find", "/context", "-type", "f"]);
    let listing = podman_ok(&run);
    podman_ok(&["rmi", "--force", PROBE]);
    listing
        .lines()
        .filter_map(|path| path.strip_prefix("/context/"))
        .map(str::to_owned)
        .collect()
}

/// The context the Dockerfile's build gets, with the ignore file next to it
/// (BuildKit's) and with the repository's .dockerignore (the classic
/// builder's, and podman's): the same, holding what the build copies and
/// neither target/ (gigabytes, and host-built artefacts) nor .git/.
fn the_build_context_is_what_the_dockerfile_needs(builder: &str) {
    let next_to_dockerfile = build_context(builder, Some("deploy/docker/Dockerfile.dockerignore"));
    let at_root = build_context(builder, None);
    assert_eq!(
        next_to_dockerfile, at_root,
        "deploy/docker/Dockerfile.dockerignore and .dockerignore give different contexts"
    );
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src/main.rs",
        "src/lib.rs",
    ] {
        assert!(
            at_root.contains(needed),
            "the build context lacks {needed}, which the build copies: {at_root:?}"
        );
    }
    let leaked: Vec<&String> = at_root
        .iter()
        .filter(|path| {
            path.split('/')
                .any(|segment| segment == "target" || segment == ".git")
        })
        .collect();
    assert!(leaked.is_empty(), "the build context holds {leaked:?}");
    println!("build context: {} files", at_root.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_delivers_webhooks_as_a_non_root_user() {
    let started = Instant::now();
    let base = output_within(
        Command::new("bash")
            .arg("deploy/docker/base-images.sh")
            .env("ENGINE", "podman --runtime /usr/sbin/runc")
            .current_dir(root()),
        PODMAN_DEADLINE,
    );
    assert!(
        base.status.success(),
        "deploy/docker/base-images.sh failed:\n{}{}",
        String::from_utf8_lossy(&base.stdout),
        String::from_utf8_lossy(&base.stderr)
    );
    let base_images = started.elapsed();
    let builder = String::from_utf8_lossy(&base.stdout)
        .lines()
        // "base-images.sh: rust:... is there", or "making rust:..." when
        // it was not (a fresh machine).
        .find_map(|line| {
            let line = line.strip_prefix("base-images.sh: ")?;
            let image = line.split_whitespace().find(|w| w.starts_with("rust:"))?;
            Some(image.to_owned())
        })
        .unwrap_or_else(|| panic!("base-images.sh did not name the builder image"));
    the_build_context_is_what_the_dockerfile_needs(&builder);

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

    the_spool_variants_pod_keeps_webhooks_across_an_outage_and_a_restart().await;
}

/// The spool pod the Helm chart renders (with the values of
/// deploy/kubernetes/overlays/nats-spool, whose committed manifests are
/// that output), as near as a machine without a cluster gets to applying
/// it: the image run with the settings of the rendered ConfigMap (the
/// broker's address substituted), the StatefulSet's user, group and
/// fsGroup, a read-only root, the Secret's token file where the pod mounts
/// it, and a volume prepared as the kubelet prepares a claim for an
/// fsGroup, mounted where the StatefulSet mounts it. Webhooks answered 202 while the broker is down are
/// still on the volume when the pod is stopped, and the pod that takes its
/// place (same volume) delivers them.
async fn the_spool_variants_pod_keeps_webhooks_across_an_outage_and_a_restart() {
    const TOKEN: &str = "image-test-token";
    let objects = crate::support::helm::render("overlays/nats-spool");
    let object = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("the chart renders no {kind} for overlays/nats-spool"))
    };
    let pod = &object("StatefulSet")["spec"]["template"]["spec"];
    let number = |field: &str| {
        pod["securityContext"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("securityContext.{field}"))
            .to_string()
    };
    let (user, group, fs_group) = (number("runAsUser"), number("runAsGroup"), number("fsGroup"));
    let mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap_or_else(|| panic!("no volumeMount"))
        .to_owned();
    let secret = SecretVolume::of(pod, &fs_group, TOKEN);
    let config = object("ConfigMap")["data"]
        .as_mapping()
        .unwrap_or_else(|| panic!("ConfigMap data"))
        .iter()
        .map(|(k, v)| {
            let (k, v) = (
                k.as_str().unwrap_or_default(),
                v.as_str().unwrap_or_default(),
            );
            (k.to_owned(), v.to_owned())
        })
        .collect::<Vec<_>>();
    let auth_header = config
        .iter()
        .find(|(k, _)| k == "APIZEE_BRIDGE_AUTH_HEADER")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no APIZEE_BRIDGE_AUTH_HEADER"));

    // The claim's volume: owned by root, group fsGroup, setgid, as the
    // kubelet leaves it (fsGroupChangePolicy changes only who owns it).
    let volume = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fs_gid: u32 = fs_group.parse().unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::chown(volume.path(), Some(0), Some(fs_gid))
        .unwrap_or_else(|e| panic!("chown: {e}"));
    std::fs::set_permissions(
        volume.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o2770),
    )
    .unwrap_or_else(|e| panic!("chmod: {e}"));
    let volume_arg = format!("{}:{mount}", volume.path().display());

    let mut nats = NatsServer::start(true).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env: Vec<String> = config
        .iter()
        .map(|(k, v)| match k.as_str() {
            "APIZEE_BRIDGE_NATS_URL" => format!("{k}={}", nats.url()),
            _ => format!("{k}={v}"),
        })
        .collect();
    env.retain(|v| !v.starts_with("APIZEE_BRIDGE_LISTEN=") && !v.contains("_METRICS_LISTEN="));
    env.extend([
        format!("APIZEE_BRIDGE_LISTEN={listen}"),
        format!("APIZEE_BRIDGE_METRICS_LISTEN={metrics}"),
    ]);
    let user_arg = format!("{user}:{group}");
    let init_args: Vec<String> = pod["initContainers"][0]["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        pod["initContainers"][0]["volumeMounts"][0]["mountPath"].as_str(),
        Some(mount.as_str()),
        "the init container mounts the spool where the bridge does"
    );
    let volumes = [volume_arg.clone(), secret.arg.clone()];
    let container = |how: &[&str], args: &[&str]| {
        run_as_in_the_pod(how, &user_arg, &fs_group, &volumes, &env, args)
    };
    // The init container runs to completion before the bridge starts.
    let init_args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let init = || container(&["--rm"], &init_args);
    let start = |name: &str| {
        container(&["--detach", "--name", name], &[]);
    };
    let addr = listen.parse().unwrap_or_else(|e| panic!("{e}"));
    let auth_header = auth_header.as_str();
    let post = |object_id: u32| async move {
        let body = format!(
            r#"{{"event":"update","time":1575976413,"object":"ticket","objectId":{object_id},"props":{{"state":"invited"}}}}"#
        );
        let reply = request(
            addr,
            "POST",
            "/webhooks",
            &[("content-type", "application/json"), (auth_header, TOKEN)],
            bytes::Bytes::from(body.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("POST: {e}"));
        (reply, body)
    };
    let metrics_addr = metrics.parse().unwrap_or_else(|e| panic!("{e}"));
    // A spooling bridge says ready once it has reached its broker, but also
    // --startup-timeout after starting without one (webhooks can then wait
    // on disk), and stays ready through an outage: that the broker is
    // there, and its stream, only the metrics say.
    let ready = async || {
        wait_until("the spool pod to reach its broker", async || {
            matches!(get(metrics_addr, "/metrics").await,
                Ok(r) if metric_value(&r.text(), r#"apizee_bridge_broker_connected{sink="nats"}"#) == 1.0)
        })
        .await
    };

    let report = init();
    assert!(report.contains("ok    spool: "), "{report}");
    assert!(report.contains("ok    broker: not checked"), "{report}");
    let first = Container {
        name: format!("apizee-bridge-spool-{}", free_port()),
    };
    start(&first.name);
    ready().await;
    let (reply, _) = post(1).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The Secret is updated, as `kubectl apply` of a Secret updates it: a
    // token added is taken, and removed is refused, by the running pod,
    // within its --auth-reload-interval; nothing restarts. An envelope
    // that is not one tells which: 401 before the token is checked, 422
    // after (and nothing is published).
    const ADDED: &str = "image-test-token-added";
    let with_added = async || {
        request(
            addr,
            "POST",
            "/webhooks",
            &[("content-type", "application/json"), (auth_header, ADDED)],
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .map(|r| r.status)
        .unwrap_or_else(|e| panic!("POST: {e}"))
    };
    assert_eq!(with_added().await, 401, "a token not yet in the Secret");
    secret.update(&format!("{TOKEN}\n{ADDED}\n"));
    wait_until(
        "the pod to take the token added to its Secret",
        async || with_added().await == 422,
    )
    .await;
    secret.update(&format!("{TOKEN}\n"));
    wait_until(
        "the pod to refuse the token removed from its Secret",
        async || with_added().await == 401,
    )
    .await;
    assert_eq!(
        post(1).await.0.status,
        200,
        "the token kept is taken throughout"
    );

    // The broker goes away: webhooks are answered 202 from the volume.
    nats.kill();
    let mut spooled = Vec::new();
    for object_id in 2..=4 {
        let (reply, body) = post(object_id).await;
        assert_eq!(reply.status, 202, "broker down: {}", reply.text());
        assert_eq!(reply.json()["spooled"], true, "{}", reply.text());
        let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
        spooled.push((id, body));
    }
    // The pod goes too (SIGTERM, as the kubelet sends it), with its spool.
    podman_ok(&["stop", "--time", "30", &first.name]);
    let spool_file = volume.path().join("spool").join("spool.redb");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(&spool_file)
            .unwrap_or_else(|e| panic!("{} is not on the volume: {e}", spool_file.display())),
    );
    assert_eq!(
        owner.to_string(),
        user,
        "the spool is written by the pod's user"
    );

    // The broker comes back, and the pod that takes the name and the volume
    // delivers what the first one was given.
    nats.restart().await;
    let report = init();
    assert!(
        report.contains(&format!("spool: {mount}/spool: 3 webhooks")),
        "the init container sees the spool the first pod left: {report}"
    );
    let second = Container {
        name: format!("apizee-bridge-spool-{}", free_port()),
    };
    start(&second.name);
    ready().await;
    let js = jetstream::new(nats.client().await);
    let stream = js
        .get_stream("APIZEE")
        .await
        .unwrap_or_else(|e| panic!("no stream APIZEE: {e}"));
    wait_until("the spooled webhooks to reach the stream", async || {
        stream.get_raw_message(4).await.is_ok()
    })
    .await;
    assert_stream_ends_with(&stream, &spooled, 4).await;
    println!(
        "spool pod: 1 webhook answered 200, {} answered 202 with the broker down, \
         delivered by the next pod from the same volume",
        spooled.len()
    );

    // The broker goes away again, and so does the pod, for good this time
    // (a StatefulSet scaled below it): its webhooks stay on its claim.
    nats.kill();
    let mut stranded = Vec::new();
    for object_id in 5..=7 {
        let (reply, body) = post(object_id).await;
        assert_eq!(reply.status, 202, "broker down: {}", reply.text());
        let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
        stranded.push((id, body));
    }
    podman_ok(&["stop", "--time", "30", &second.name]);
    nats.restart().await;
    let report = drain_job_on(volume.path(), &nats.url(), TOKEN);
    assert!(
        report.contains(&format!("delivered {}, left 0", stranded.len())),
        "the drain Job's report: {report}"
    );
    assert_stream_ends_with(&stream, &stranded, 7).await;
    println!(
        "spool drain Job: {} webhooks the pod scaled away left on its claim delivered",
        stranded.len()
    );
}

/// The drain Job the Helm chart renders (with the values of
/// deploy/kubernetes/overlays/nats-spool-drain), run with the image as the
/// kubelet would run it on the claim held at `volume`: its args, its
/// environment (the rendered ConfigMap and its own variables, the broker's
/// address and a shorter drain timeout substituted), the Secret's file
/// holding `token`, its user, group and fsGroup, a read-only root, the
/// claim where it mounts it. It must exit 0; returns what it printed.
fn drain_job_on(volume: &Path, nats_url: &str, token: &str) -> String {
    let objects = crate::support::helm::render("overlays/nats-spool-drain");
    let object = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("the chart renders no {kind} for overlays/nats-spool-drain"))
    };
    let pod = &object("Job")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let number = |field: &str| {
        pod["securityContext"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("the Job's securityContext.{field}"))
            .to_string()
    };
    let user = format!("{}:{}", number("runAsUser"), number("runAsGroup"));
    let fs_group = number("fsGroup");
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap_or_else(|| panic!("the Job mounts no volume"));
    let secret = SecretVolume::of(pod, &fs_group, token);
    let volumes = [format!("{}:{mount}", volume.display()), secret.arg.clone()];
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    let args = strings(&container["args"]);
    let mut env: Vec<String> = object("ConfigMap")["data"]
        .as_mapping()
        .unwrap_or_else(|| panic!("ConfigMap data"))
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap_or_default(),
                v.as_str().unwrap_or_default(),
            )
        })
        .chain(
            container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|var| {
                    let name = var["name"].as_str().unwrap_or_default();
                    let value = var["value"].as_str().unwrap_or_else(|| {
                        panic!("the Job's env {name}: source not handled: {var:?}")
                    });
                    (name, value)
                }),
        )
        .map(|(k, v)| match k {
            "APIZEE_BRIDGE_NATS_URL" => format!("{k}={nats_url}"),
            // A failing drain says so within the test's patience.
            "APIZEE_BRIDGE_SPOOL_DRAIN_TIMEOUT" => format!("{k}=60s"),
            _ => format!("{k}={v}"),
        })
        .collect();
    env.sort();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_as_in_the_pod(
        // The drain's own timeout is 60 s; this is the test's deadline.
        &["--rm", "--timeout", "120"],
        &user,
        &fs_group,
        &volumes,
        &env,
        &args,
    )
}

/// The pod's Secret volume of webhook secrets (`auth`), as the kubelet
/// makes it: each item a link through `..data` into a directory of the
/// Secret's current contents (owned by root and the pod's fsGroup, in the
/// Secret's defaultMode), which an update replaces by swapping `..data`.
/// `arg` is podman's `--volume` for it, read-only.
struct SecretVolume {
    dir: tempfile::TempDir,
    items: Vec<String>,
    gid: u32,
    mode: u32,
    version: std::cell::Cell<u32>,
    arg: String,
}

impl SecretVolume {
    /// The volume of `pod`'s auth Secret, each item holding `token`.
    fn of(pod: &serde_yaml::Value, fs_group: &str, token: &str) -> Self {
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "auth")
            .unwrap_or_else(|| panic!("the pod has no auth volume"));
        let mount = pod["containers"][0]["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == "auth")
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("the auth volume is not mounted"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let items: Vec<String> = volume["secret"]["items"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|item| item["path"].as_str().unwrap_or_default().to_owned())
            .collect();
        for item in &items {
            std::os::unix::fs::symlink(format!("..data/{item}"), dir.path().join(item))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let arg = format!("{}:{mount}:ro", dir.path().display());
        let volume = Self {
            dir,
            items,
            gid: fs_group.parse().unwrap_or_else(|e| panic!("{e}")),
            mode: volume["secret"]["defaultMode"]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or_else(|| panic!("the auth volume's defaultMode")),
            version: std::cell::Cell::new(0),
            arg,
        };
        volume.update(&format!("{token}\n"));
        volume
    }

    /// The Secret updated to hold `contents` in every item, as the kubelet
    /// writes it: a new directory, then `..data` swapped to it at once.
    fn update(&self, contents: &str) {
        let version = self.version.get() + 1;
        self.version.set(version);
        let name = format!("..{version}");
        let new = self.dir.path().join(&name);
        std::fs::create_dir(&new).unwrap_or_else(|e| panic!("{e}"));
        for item in &self.items {
            let file = new.join(item);
            std::fs::write(&file, contents).unwrap_or_else(|e| panic!("{e}"));
            std::os::unix::fs::chown(&file, Some(0), Some(self.gid))
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(
                &file,
                std::os::unix::fs::PermissionsExt::from_mode(self.mode),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let swap = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &swap).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&swap, self.dir.path().join("..data")).unwrap_or_else(|e| panic!("{e}"));
        if version > 1 {
            let old = self.dir.path().join(format!("..{}", version - 1));
            std::fs::remove_dir_all(old).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// A container of the image run as Kubernetes runs one of the pod's: `how`
/// (detached and named, or run to completion), then what every container of
/// the pod shares: host network, read-only root, no capabilities, the pod's
/// `user` (`UID:GID`) and `fs_group`, its `volumes` (`HOST:MOUNT[:ro]`)
/// and the environment (`NAME=VALUE`); then the image and `args`.
fn run_as_in_the_pod(
    how: &[&str],
    user: &str,
    fs_group: &str,
    volumes: &[String],
    env: &[String],
    args: &[&str],
) -> String {
    let mut run = vec!["run"];
    run.extend(how);
    run.extend([
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--user",
        user,
        "--group-add",
        fs_group,
    ]);
    for volume in volumes {
        run.extend(["--volume", volume.as_str()]);
    }
    run.extend(LIMITS);
    for variable in env {
        run.extend(["--env", variable.as_str()]);
    }
    run.push(IMAGE);
    run.extend(args);
    podman_ok(&run)
}

/// `stream` holds `total` messages, the last of them `webhooks` (event id
/// and body), in order: each delivered once.
async fn assert_stream_ends_with(
    stream: &async_nats::jetstream::stream::Stream,
    webhooks: &[(String, String)],
    total: u64,
) {
    let first = total + 1 - webhooks.len() as u64;
    for (sequence, (id, body)) in (first..).zip(webhooks) {
        let stored = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("message {sequence}: {e}"));
        assert_eq!(stored.payload, body.as_bytes(), "message {sequence}");
        assert_eq!(
            stored
                .headers
                .get("apizee-event-id")
                .map(|v| v.as_str().to_owned())
                .as_ref(),
            Some(id),
            "message {sequence}"
        );
    }
    let info = stream
        .get_info()
        .await
        .unwrap_or_else(|e| panic!("stream info: {e}"));
    assert_eq!(info.state.messages, total, "each webhook once");
}
