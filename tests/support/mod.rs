//! Test support: free ports, broker processes held by guards that kill them
//! on drop (NATS in [`nats`], Kafka in [`kafka`]), the bridge running
//! in-process on port 0, and a tiny HTTP client. Readiness is always polled
//! against a deadline, never assumed after a fixed sleep.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod answers;
pub mod compose;
pub mod helm;
pub mod kafka;
pub mod kubernetes;
pub mod load;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod tls;

#[allow(unused_imports)] // each test binary uses a different part
pub use nats::{
    NatsCluster, NatsRelease, NatsServer, ServerAuth, nats_server_binary, stream_contents,
};

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apizee_bridge::commands::Cli;
use apizee_bridge::http::App;
use apizee_bridge::settings::Settings;
use apizee_bridge::sink::Sink;
use apizee_bridge::{Listeners, Overrides, Service};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One test per case and release of a broker, as `current::<case>` and
/// `oldest::<case>`, each calling `case(Release::Current)` or
/// `case(Release::Oldest)`: `on_both_releases!(NatsRelease: a, b)`.
#[allow(unused_macros)] // only the brokers binary has cases on two releases
macro_rules! on_both_releases {
    ($release:ident: $($case:ident),* $(,)?) => {
        mod current {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$release::Current).await;
                }
            )*
        }
        mod oldest {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$release::Oldest).await;
                }
            )*
        }
    };
}

/// How long any readiness wait may take before the test fails.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The samples from the platform's specification, byte for byte.
pub const SPEC_TICKET: &str = include_str!("../samples/spec-ticket.json");

pub const SPEC_CONVERSATION: &str = include_str!("../samples/spec-conversation.json");

/// A port nobody listens on right now. The small window before the caller
/// binds it is acceptable for loopback tests.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Longest a stopping in-process bridge may take: `--drain-delay` plus
/// `--shutdown-timeout` (20 s by default) plus the 5 s after them, with
/// room for a slow machine. A hang guard.
pub const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns true or the deadline passes.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + READY_DEADLINE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {READY_DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test with `message` as its only output: no "panicked at"
/// line and no backtrace (resuming an unwind skips the panic hook, which
/// prints both, even with `RUST_BACKTRACE` set). For a tool that is not
/// installed, whose one line says what installs it. The test harness shows
/// what the test wrote, so the line is written first.
pub fn missing_tool(message: impl Into<String>) -> ! {
    let message = message.into();
    eprintln!("{message}");
    std::panic::resume_unwind(Box::new(message))
}

/// A program from a Debian package: `$VAR`, else the PATH, else /usr/sbin
/// (where Debian puts haproxy and runc, off many users' PATH). Missing, it
/// fails with one line naming the package that installs it.
pub fn tool(name: &str, var: &str, package: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return path.into();
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            missing_tool(format!(
                "{name} not found: as root, `apt-get install {package}` (bash .ci/test does), \
                 or set {var}=/path/to/{name}"
            ))
        })
}

/// Sends `signal` (a name such as `STOP`, `CONT` or `KILL`) to `pid` with
/// kill(1), so no crate is needed for it.
pub fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pid}: {status}"))
    }
}

/// Whether `/proc/PID/stat` shows the process stopped (state `T`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses
            // and may hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "T"))
        })
        .unwrap_or(false)
}

/// A child process stopped with SIGSTOP: its sockets stay open and nothing
/// is answered. Dropping the guard (or [`Frozen::thaw`]) sends SIGCONT, so a
/// failing test never leaves a stopped process behind; the child's own guard
/// kills with SIGKILL, which a stopped process does not ignore. Declare it
/// after the child's guard so that it is dropped first.
pub struct Frozen {
    pid: Option<u32>,
}

impl Frozen {
    /// Returns once the kernel shows the process stopped: the signal is
    /// only queued when `kill` returns, and on a busy machine the process
    /// could still answer a request sent right after.
    pub fn freeze(pid: u32) -> Self {
        send_signal(pid, "STOP").unwrap_or_else(|e| panic!("{e}"));
        let frozen = Self { pid: Some(pid) };
        let deadline = Instant::now() + READY_DEADLINE;
        while !is_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} did not stop on SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        frozen
    }

    /// Resumes the process.
    pub fn thaw(mut self) {
        if let Some(pid) = self.pid.take() {
            send_signal(pid, "CONT").unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = send_signal(pid, "CONT");
        }
    }
}

/// The bridge running in-process on loopback port 0, stopped on drop:
/// [`apizee_bridge::Service`] built and served exactly as `run` does,
/// with the sink optionally replaced.
pub struct Bridge {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub app: Arc<App>,
    /// Set when webhooks are served over TLS (`--tls-cert`).
    pub tls: Option<Arc<apizee_bridge::tls::ServerTls>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Parses bridge flags exactly as the binary does; without a
/// `--drain-delay`, none: no load balancer watches a test's bridge.
pub fn settings(args: &[&str]) -> Settings {
    let no_delay = ["--drain-delay", "0s"];
    let defaults = if args.contains(&"--drain-delay") {
        &[][..]
    } else {
        &no_delay[..]
    };
    let all = std::iter::once("apizee-bridge")
        .chain(defaults.iter().copied())
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(all).unwrap_or_else(|e| panic!("bad test flags {args:?}: {e}"));
    Settings::from_args(cli.service).unwrap_or_else(|e| panic!("bad test settings {args:?}: {e}"))
}

impl Bridge {
    /// Starts the bridge with the sink its flags select.
    pub async fn start(args: &[&str]) -> Self {
        Self::launch(settings(args), Overrides::default()).await
    }

    /// Starts the bridge with a sink the test holds (a `MemorySink`).
    pub async fn with_sink(settings: Settings, sink: Arc<dyn Sink>) -> Self {
        let overrides = Overrides { sink: Some(sink) };
        Self::launch(settings, overrides).await
    }

    /// The one way every test starts the bridge: listeners on loopback
    /// port 0, then the service's own build and serve.
    async fn launch(settings: Settings, overrides: Overrides) -> Self {
        let listeners = Listeners {
            webhooks: TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind: {e}")),
            metrics: TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind: {e}")),
        };
        let addr = listeners
            .webhooks
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics_addr = listeners
            .metrics
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"));
        let service = Service::build(settings, overrides)
            .await
            .unwrap_or_else(|e| panic!("cannot start the bridge: {e}"));
        let app = service.app().clone();
        let tls = service.tls().cloned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service.serve(listeners, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics_addr,
            app,
            tls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn wait_ready(&self) {
        let addr = self.addr;
        wait_until(
            "the bridge to be ready",
            async || matches!(get(addr, "/readyz").await, Ok(r) if r.status == 200),
        )
        .await;
    }

    pub async fn wait_not_ready(&self) {
        let addr = self.addr;
        wait_until(
            "the bridge to report not ready",
            async || matches!(get(addr, "/readyz").await, Ok(r) if r.status == 503),
        )
        .await;
    }

    /// POSTs a webhook to the default path with the platform's content type.
    pub async fn post(&self, body: &str) -> Reply {
        self.request(
            "POST",
            "/webhooks",
            &[("content-type", "application/JSON")],
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        request(self.addr, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn metrics(&self) -> String {
        let reply = get(self.metrics_addr, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(reply.status, 200);
        reply.text()
    }

    /// Signals the bridge to stop, as SIGTERM would, without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the bridge as SIGTERM would, and waits for it to finish: a
    /// panic in `Service::serve` during the shutdown fails the test with
    /// that panic, and a shutdown that hangs fails it after
    /// [`STOP_DEADLINE`].
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(STOP_DEADLINE, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("the bridge's task ended abnormally: {e}"),
                Err(_) => panic!("the bridge did not stop within {STOP_DEADLINE:?}"),
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One HTTP answer, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    request(addr, "GET", path, &[], Bytes::new()).await
}

/// How long one request of [`request`] may take, from the connection to
/// the answer's last byte: a hang guard, far above any answer the bridge
/// gives (`--publish-timeout` and `--body-read-timeout` bound them).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Sends one request on a fresh connection and reads the whole answer,
/// within [`REQUEST_DEADLINE`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    tokio::time::timeout(
        REQUEST_DEADLINE,
        exchange(addr, method, path, headers, body),
    )
    .await
    .map_err(|_| format!("no whole answer within {REQUEST_DEADLINE:?}"))?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    send_on(&mut sender, request).await
}

/// Sends `request` on a client connection and reads the whole answer.
pub async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The value of one series in a Prometheus text exposition, such as
/// `apizee_bridge_publishes_total{outcome="ok",sink="nats"}`. A series that
/// is not there fails the test, also inside a wait: a misspelt name or a
/// label set the bridge never exports must not read as 0.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {value:?}: {e}"))
        })
        .unwrap_or_else(|| panic!("no series {series} in the metrics:\n{exposition}"))
}
