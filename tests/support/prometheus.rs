//! A real Prometheus server for the tests: its own config and storage in a
//! temporary folder, its HTTP API, killed on drop (with its log printed if
//! the test failed).

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::{free_port, get, tool};

/// A server scrapes at 1 s in the tests; this covers a slow start too.
pub const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(30);

/// A Prometheus server child process with its own config and storage,
/// killed when dropped. If the test fails, its log is printed.
pub struct Prometheus {
    child: Mutex<Child>,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(config: &Yaml) -> Self {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// Listens on `addr`, for a config that names the server's own address.
    pub fn start_on(config: &Yaml, addr: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config_path = dir.path().join("prometheus.yml");
        let config = serde_yaml::to_string(config).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let log = dir.path().join("prometheus.log");
        let log_file = File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let log_err = log_file.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(tool("prometheus", "PROMETHEUS", "prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
        Self {
            child: Mutex::new(child),
            addr,
            log,
            _dir: dir,
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `check` until it gives a value, failing at once if the server
    /// exits and after [`PROMETHEUS_DEADLINE`] otherwise.
    pub async fn poll<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            let exited = self.child().try_wait();
            if let Ok(Some(status)) = exited {
                panic!("prometheus exited ({status}) while waiting for {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {PROMETHEUS_DEADLINE:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>`'s `data`, if the server answers with success.
    pub async fn api(&self, path: &str) -> Option<Json> {
        let reply = get(self.addr, &format!("/api/v1/{path}")).await.ok()?;
        let body: Json = serde_json::from_slice(&reply.body).ok()?;
        (reply.status == 200 && body["status"] == "success").then(|| body["data"].clone())
    }

    pub async fn query(&self, promql: &str) -> Option<Vec<Json>> {
        let data = self
            .api(&format!("query?query={}", percent_encode(promql)))
            .await?;
        data["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
        drop(child);
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
