//! Test support: free ports, a NATS server as a child process held by a
//! guard that kills it on drop, the bridge running in-process on port 0, and
//! a tiny HTTP client. Readiness is always polled against a deadline, never
//! assumed after a fixed sleep.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apizee_bridge::config::{Cli, Settings};
use apizee_bridge::http::App;
use apizee_bridge::metrics::Metrics;
use apizee_bridge::sink::Sink;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any readiness wait may take before the test fails.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The samples from the platform's specification, byte for byte.
pub const SPEC_TICKET: &str = r#"{
    "event": "update",
    "time": 1575976413,
    "object": "ticket",
    "objectId": 100,
    "props": {
        "state": "invited"
        }
}"#;

pub const SPEC_CONVERSATION: &str = r#"{
  "event": "update",
  "time": 1632144306,
  "object": "conversation",
  "objectId": "734e3a7b-eb17-4d3f-901d-bcff178b",
  "props": {
    "eventType": "conversationEnded",
    "name": "TEST",
    "finishedAt": "2021-09-20T13:25:06+00:00"
  }
}"#;

/// A port nobody listens on right now. The small window before the caller
/// binds it is acceptable for loopback tests.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

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

pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return path.into();
    }
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let candidate = Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nats-server not found: install Debian's nats-server package (bash .ci/run does)");
}

/// A nats-server child process on a free loopback port, with JetStream
/// storing in its own temporary directory. Killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    jetstream: bool,
    store: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start(jetstream: bool) -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = Self {
            child: None,
            port: free_port(),
            jetstream,
            store,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(nats_server_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store.path());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
        let url = self.url();
        let jetstream = self.jetstream;
        wait_until("nats-server to accept clients", async || {
            match async_nats::connect(&url).await {
                // With JetStream, also wait until its API answers.
                Ok(client) if jetstream => async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok(),
                Ok(_) => true,
                Err(_) => false,
            }
        })
        .await;
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bridge running in-process on loopback port 0, stopped on drop.
pub struct Bridge {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Parses bridge flags exactly as the binary does.
pub fn settings(args: &[&str]) -> Settings {
    let cli = Cli::try_parse_from(std::iter::once("apizee-bridge").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("bad test flags {args:?}: {e}"));
    Settings::from_cli(cli).unwrap_or_else(|e| panic!("bad test settings {args:?}: {e}"))
}

impl Bridge {
    /// Starts the bridge with the sink its flags select.
    pub async fn start(args: &[&str]) -> Self {
        let settings = settings(args);
        let sink = apizee_bridge::start_sink(&settings.sink)
            .await
            .unwrap_or_else(|e| panic!("cannot start sink: {e}"));
        Self::with_sink(settings, sink).await
    }

    /// Starts the bridge with a sink the test holds (a `MemorySink`).
    pub async fn with_sink(settings: Settings, sink: Arc<dyn Sink>) -> Self {
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let metrics_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let metrics_addr = metrics_listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"));
        let app = Arc::new(App::new(settings.http, sink, metrics));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(apizee_bridge::serve(
            app.clone(),
            listener,
            metrics_listener,
            settings.shutdown_timeout,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            metrics_addr,
            app,
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

    /// Stops the bridge as SIGTERM would, and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
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

/// Sends one request on a fresh connection.
pub async fn request(
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
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}
