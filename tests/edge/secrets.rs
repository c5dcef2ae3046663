//! Secrets rotated without a restart, against the binary: the files behind
//! `--auth-token-file`, `--basic-auth-file` and `--hmac-secret-file` are
//! read again when they change (a Kubernetes Secret volume's `..data` swap
//! included) and on SIGHUP, while a steady load with the unchanged
//! credentials never sees anything but 2xx.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use ring::hmac;
use tokio::task::JoinHandle;

use crate::support::process::BridgeProcess;
use crate::support::*;

const FAILED_RELOADS: &str = r#"apizee_bridge_auth_reloads_total{result="failure"}"#;
const SUCCESSFUL_RELOADS: &str = r#"apizee_bridge_auth_reloads_total{result="success"}"#;
const LAST_SUCCESS: &str = "apizee_bridge_auth_last_reload_success_timestamp_seconds";

/// The credentials one request carries; `None` leaves that one out.
#[derive(Clone, Copy)]
struct Credentials<'a> {
    token: &'a str,
    basic: Option<&'a str>,
    hmac_key: Option<&'a str>,
}

const UNCHANGED: Credentials<'static> = Credentials {
    token: "old-token",
    basic: Some("apizee:old-password"),
    hmac_key: Some("old-key"),
};

async fn post(addr: std::net::SocketAddr, credentials: Credentials<'_>) -> u16 {
    let basic = credentials
        .basic
        .map(|pair| format!("Basic {}", STANDARD.encode(pair)));
    let signature = credentials.hmac_key.map(|key| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        hmac::sign(&key, SPEC_TICKET.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-apizee-secret", credentials.token),
    ];
    if let Some(basic) = &basic {
        headers.push(("authorization", basic));
    }
    if let Some(signature) = &signature {
        headers.push(("x-signature", signature));
    }
    request(
        addr,
        "POST",
        "/webhooks",
        &headers,
        Bytes::from_static(SPEC_TICKET.as_bytes()),
    )
    .await
    .map(|reply| reply.status)
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_for_status(addr: std::net::SocketAddr, credentials: Credentials<'_>, status: u16) {
    let what = format!(
        "the answer {status} to token {:?}, Basic {:?}, HMAC key {:?}",
        credentials.token, credentials.basic, credentials.hmac_key
    );
    wait_until(&what, async || post(addr, credentials).await == status).await;
}

async fn metric(metrics: std::net::SocketAddr, series: &str) -> f64 {
    let reply = get(metrics, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    metric_value(&reply.text(), series)
}

/// Replaces a file at once (write beside it, then rename), as editors and
/// `kubectl` do: a poll never reads it half written.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap_or_else(|e| panic!("{}: {e}", next.display()));
    std::fs::rename(&next, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Requests with the unchanged credentials, one after another until
/// stopped: how many were sent, and every answer that was not 2xx.
struct Load {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, Vec<u16>)>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut sent, mut failed) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                let status = post(addr, UNCHANGED).await;
                sent += 1;
                if !(200..300).contains(&status) {
                    failed.push(status);
                }
            }
            (sent, failed)
        });
        Self { stop, task }
    }

    async fn finish(self) -> (usize, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A Secret volume as Kubernetes mounts it: `..data -> v1/`, and each file
/// a symlink through `..data`. Returns the mount and `v1/`, whose files
/// can be replaced in place.
fn secret_volume(root: &Path, files: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let mount = root.join("secret");
    let v1 = mount.join("..2026_01_01_v1");
    std::fs::create_dir_all(&v1).unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in files {
        std::fs::write(v1.join(name), text).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(format!("..data/{name}"), mount.join(name))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    std::os::unix::fs::symlink("..2026_01_01_v1", mount.join("..data"))
        .unwrap_or_else(|e| panic!("{e}"));
    (mount, v1)
}

/// Kubernetes' update: the new version in a new directory, `..data`
/// renamed over atomically.
fn swap_secret_volume(mount: &Path, files: &[(&str, &str)]) {
    let v2 = mount.join("..2026_01_02_v2");
    std::fs::create_dir_all(&v2).unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in files {
        std::fs::write(v2.join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }
    let next = mount.join("..data_tmp");
    std::os::unix::fs::symlink("..2026_01_02_v2", &next).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&next, mount.join("..data")).unwrap_or_else(|e| panic!("{e}"));
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_files_take_effect_without_a_restart_or_a_refusal() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mount, v1) = secret_volume(
        dir.path(),
        &[
            ("tokens", "old-token\n"),
            ("basic", "apizee:old-password\n"),
            ("hmac", "old-key\n"),
        ],
    );
    let path = |name: &str| mount.join(name).to_string_lossy().into_owned();
    let (tokens, basic, keys) = (path("tokens"), path("basic"), path("hmac"));
    let log = dir.path().join("bridge.log");
    let (bridge, metrics) = BridgeProcess::spawn_on_free_ports(
        [
            ("APIZEE_BRIDGE_AUTH_HEADER", "X-Apizee-Secret"),
            ("APIZEE_BRIDGE_AUTH_TOKEN_FILE", tokens.as_str()),
            ("APIZEE_BRIDGE_BASIC_AUTH_FILE", basic.as_str()),
            ("APIZEE_BRIDGE_HMAC_SECRET_FILE", keys.as_str()),
            ("APIZEE_BRIDGE_AUTH_RELOAD_INTERVAL", "50ms"),
        ],
        &log,
    );
    bridge.wait_ready().await;
    let addr = bridge.addr;
    assert_eq!(post(addr, UNCHANGED).await, 200, "{}", log_of(&log));
    let load = Load::start(addr);

    // A token added is accepted, then refused once removed.
    let new_token = Credentials {
        token: "new-token",
        ..UNCHANGED
    };
    assert_eq!(post(addr, new_token).await, 401);
    replace(&v1.join("tokens"), "old-token\nnew-token\n");
    wait_for_status(addr, new_token, 200).await;
    replace(&v1.join("tokens"), "# new-token withdrawn\nold-token\n");
    wait_for_status(addr, new_token, 401).await;

    // The same for Basic credentials and HMAC keys.
    let new_basic = Credentials {
        basic: Some("second:new-password"),
        ..UNCHANGED
    };
    replace(
        &v1.join("basic"),
        "apizee:old-password\nsecond:new-password\n",
    );
    wait_for_status(addr, new_basic, 200).await;
    replace(&v1.join("basic"), "apizee:old-password\n");
    wait_for_status(addr, new_basic, 401).await;
    let new_key = Credentials {
        hmac_key: Some("new-key"),
        ..UNCHANGED
    };
    replace(&v1.join("hmac"), "old-key\nnew-key\n");
    wait_for_status(addr, new_key, 200).await;
    replace(&v1.join("hmac"), "old-key\n");
    wait_for_status(addr, new_key, 401).await;
    assert_eq!(metric(metrics, FAILED_RELOADS).await, 0.0);

    // A file left without entries is refused; the old set stays, and
    // only it: a wrong token is still refused.
    let wrong = Credentials {
        token: "wrong-token",
        ..UNCHANGED
    };
    replace(&v1.join("tokens"), "# emptied by mistake\n");
    wait_until("the failed reload to be counted", async || {
        metric(metrics, FAILED_RELOADS).await >= 1.0
    })
    .await;
    assert_eq!(post(addr, UNCHANGED).await, 200);
    assert_eq!(post(addr, wrong).await, 401);
    replace(&v1.join("basic"), "no colon, so not USER:PASSWORD\n");
    wait_until("the second failed reload to be counted", async || {
        metric(metrics, FAILED_RELOADS).await >= 2.0
    })
    .await;
    assert_eq!(post(addr, UNCHANGED).await, 200);
    assert_eq!(post(addr, wrong).await, 401);

    // The Secret updated as Kubernetes does it: every file at once.
    let swapped = Credentials {
        token: "swapped-token",
        ..UNCHANGED
    };
    let successes = metric(metrics, SUCCESSFUL_RELOADS).await;
    swap_secret_volume(
        &mount,
        &[
            ("tokens", "old-token\nswapped-token\n"),
            ("basic", "apizee:old-password\n"),
            ("hmac", "old-key\n"),
        ],
    );
    wait_for_status(addr, swapped, 200).await;
    assert!(metric(metrics, SUCCESSFUL_RELOADS).await > successes);

    let (sent, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "the unchanged credentials got {} non-2xx answers of {sent}, the first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)],
    );
    assert!(sent > 10, "the load sent only {sent} requests");
    let log = log_of(&log);
    assert!(log.contains("--auth-token-file"), "{log}");
    assert!(log.contains("--basic-auth-file"), "{log}");
    for secret in ["old-token", "old-password", "old-key", "no colon"] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
    assert!(metric(metrics, LAST_SUCCESS).await > 1.0e9);
}

#[tokio::test]
async fn sighup_reloads_the_secret_files_at_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tokens = dir.path().join("tokens");
    replace(&tokens, "old-token\n");
    let tokens_arg = tokens.to_string_lossy().into_owned();
    let log = dir.path().join("bridge.log");
    let (bridge, metrics) = BridgeProcess::spawn_on_free_ports(
        [
            ("APIZEE_BRIDGE_AUTH_HEADER", "X-Apizee-Secret"),
            ("APIZEE_BRIDGE_AUTH_TOKEN_FILE", tokens_arg.as_str()),
            // Never within the test: only the signal can reload.
            ("APIZEE_BRIDGE_AUTH_RELOAD_INTERVAL", "1h"),
        ],
        &log,
    );
    bridge.wait_ready().await;
    let new_token = Credentials {
        token: "new-token",
        basic: None,
        hmac_key: None,
    };
    replace(&tokens, "old-token\nnew-token\n");
    assert_eq!(post(bridge.addr, new_token).await, 401);
    assert_eq!(metric(metrics, SUCCESSFUL_RELOADS).await, 0.0);
    bridge.signal("HUP");
    wait_for_status(bridge.addr, new_token, 200).await;
    assert_eq!(metric(metrics, SUCCESSFUL_RELOADS).await, 1.0);
    assert!(log_of(&log).contains("SIGHUP received: reloading the secret files"));
}
