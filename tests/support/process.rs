//! The bridge binary as a child process on free loopback ports, killed by
//! its own id when dropped: for what only the real process shows (signals,
//! exit codes, logs, kill -9).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{READY_DEADLINE, free_port, get, send_signal, wait_until};

pub const BINARY: &str = env!("CARGO_BIN_EXE_apizee-bridge");

/// Runs the binary to completion with `args`, in an empty environment: for
/// `--help` and for flags it must refuse at start-up.
pub fn run(args: &[impl AsRef<OsStr>]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BINARY}: {e}"))
}

/// Runs the binary with `args` in `env` alone (nothing else from the
/// test's environment) to completion, killing it if it has not exited
/// `within`: for a tool that talks to a broker (`spool drain`).
pub fn run_within<'a>(
    args: &[&str],
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    within: Duration,
) -> Output {
    let child = Command::new(BINARY)
        .args(args)
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BINARY}: {e}"));
    let pid = child.id();
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(within) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{BINARY} {args:?}: {e}")),
        Err(_) => {
            let _ = super::send_signal(pid, "KILL");
            panic!("{BINARY} {args:?} did not exit within {within:?}")
        }
    }
}

pub struct BridgeProcess {
    child: Child,
    /// The webhook listener.
    pub addr: SocketAddr,
}

impl BridgeProcess {
    /// Starts the binary with `args`, in an empty environment, with its
    /// output captured for [`Self::stdout_lines`] and [`Self::stderr_lines`].
    pub fn spawn(args: &[&str]) -> Self {
        Self::start(args, Stdio::piped)
    }

    /// The same, with its output discarded: for long runs whose logs nobody
    /// reads, which would otherwise fill the pipe and block the bridge.
    pub fn spawn_quiet(args: &[&str]) -> Self {
        Self::start(args, Stdio::null)
    }

    fn start(args: &[&str], output: fn() -> Stdio) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(BINARY)
            .args(["--listen", &addr.to_string(), "--metrics-listen", &metrics])
            .args(args)
            .env_clear()
            // No load balancer watches a test's bridge: stopping need not
            // wait for one to notice (a test that checks the delay sets it).
            .env("APIZEE_BRIDGE_DRAIN_DELAY", "0s")
            .stdout(output())
            .stderr(output())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        Self { child, addr }
    }

    /// Starts the binary configured by `env` alone (no flags, nothing else
    /// from the test's environment), as a deploy file configures it;
    /// `addr` is where its `APIZEE_BRIDGE_LISTEN` points. Its stderr goes to
    /// `log`.
    pub fn spawn_with_env<'a>(
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        addr: SocketAddr,
        log: &std::path::Path,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new(BINARY)
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        Self { child, addr }
    }

    pub async fn wait_ready(&self) {
        let addr = self.addr;
        wait_until(
            "the binary to be ready",
            async || matches!(get(addr, "/readyz").await, Ok(r) if r.status == 200),
        )
        .await;
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits for exit, polling against a deadline. Async, so that the
    /// test's own connections are still driven (and closed) meanwhile.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                return status;
            }
            assert!(Instant::now() < deadline, "the binary did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the process wrote to stderr; call once it has exited.
    pub fn stderr_lines(&mut self) -> Vec<String> {
        lines(self.child.stderr.take())
    }

    /// Everything the process wrote to stdout; call once it has exited.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        lines(self.child.stdout.take())
    }
}

fn lines(output: Option<impl Read>) -> Vec<String> {
    output
        .map(|o| BufReader::new(o).lines().map_while(Result::ok).collect())
        .unwrap_or_default()
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}
