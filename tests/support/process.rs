//! Child processes with deadlines. [`Watched`]: any program a test runs,
//! its output read as it comes and every wait bounded, failing the test
//! with the command line and what it printed so far, and killed by its own
//! id; [`output_within`] runs one to completion. [`BridgeProcess`]: the
//! bridge binary on free loopback ports, killed by its own id when dropped,
//! for what only the real process shows (signals, exit codes, logs, kill -9).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{READY_DEADLINE, free_port, get, send_signal, wait_until};

pub const BINARY: &str = env!("CARGO_BIN_EXE_apizee-bridge");

/// How long a program a test runs to completion (the binary's `--help` or
/// `check`, promtool, ldd, bash) may take before the test fails: a hang
/// guard, far above what any of them takes on a busy machine. Programs that
/// work longer (node, podman) are given their own.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// How often a wait looks at the child again.
const POLL: Duration = Duration::from_millis(10);

/// Runs `command` to completion, its stdin empty: its output, or, past
/// `within`, a failed test naming it and showing what it printed so far
/// (the child killed first). Blocking: from async code, [`Watched::finish`].
pub fn output_within(command: &mut Command, within: Duration) -> Output {
    Watched::spawn(command).wait(within)
}

/// [`output_within`] without failing the test: the message it would fail
/// with. For a destructor, which must not panic while the test unwinds.
pub fn try_output_within(command: &mut Command, within: Duration) -> Result<Output, String> {
    Watched::try_start(command, None)?.wait_or_kill(within)
}

/// What a child wrote to one of its pipes, read by a thread of its own as
/// it comes: a pipe nobody reads would block the child once full, and a
/// test that gives up on a child can still show what it said.
#[derive(Default)]
struct Pipe {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Pipe {
    fn read(from: Option<impl Read + Send + 'static>) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let reader = from.map(|mut from| {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut buffer = [0; 8192];
                // Until end of file, or an error, which only a killed child
                // causes: what came before is kept either way.
                while let Ok(read @ 1..) = from.read(&mut buffer) {
                    lock(&bytes).extend_from_slice(&buffer[..read]);
                }
            })
        });
        Self { bytes, reader }
    }

    /// Whether the writing end is closed (every process that held it
    /// exited) and everything was read.
    fn closed(&self) -> bool {
        self.reader.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn so_far(&self) -> Vec<u8> {
        lock(&self.bytes).clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.so_far()).into_owned()
    }
}

/// A poisoned lock only means a reader thread panicked; the bytes are
/// still there.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `program arg...`, for messages.
fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child process whose stdout and stderr are read as they come. Every
/// wait on it has a deadline; one that passes kills it (by its own id) and
/// fails the test with its command line and what it printed so far. Killed
/// when dropped, so a test that fails midway leaves nothing running.
pub struct Watched {
    child: Child,
    command: String,
    stdout: Pipe,
    stderr: Pipe,
}

impl Watched {
    /// Starts `command` with its stdin empty.
    pub fn spawn(command: &mut Command) -> Self {
        Self::start(command, None)
    }

    /// Starts `command` with `input` on its stdin, then end of file;
    /// written by a thread of its own, so that a child that reads none of
    /// it blocks nothing.
    pub fn spawn_with_input(command: &mut Command, input: impl Into<Vec<u8>>) -> Self {
        Self::start(command, Some(input.into()))
    }

    fn start(command: &mut Command, input: Option<Vec<u8>>) -> Self {
        Self::try_start(command, input).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(command: &mut Command, input: Option<Vec<u8>>) -> Result<Self, String> {
        let line = command_line(command);
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {line}: {e}"))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A child that exits without reading it all closes the pipe:
            // what it printed and its status say more than the write error.
            std::thread::spawn(move || stdin.write_all(&input));
        }
        let stdout = Pipe::read(child.stdout.take());
        let stderr = Pipe::read(child.stderr.take());
        Ok(Self {
            child,
            command: line,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits, blocking, until it has exited and its pipes are closed: its
    /// output; past `within`, kills it and fails the test with what it
    /// printed.
    pub fn wait(self, within: Duration) -> Output {
        self.wait_or_kill(within).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::wait`], with the failure as an error.
    fn wait_or_kill(mut self, within: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(done) = self.done(deadline, within) {
                return done;
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Self::wait`] for async code: the runtime goes on meanwhile (an
    /// in-process bridge the child talks to keeps answering).
    pub async fn finish(mut self, within: Duration) -> Output {
        let deadline = Instant::now() + within;
        loop {
            if let Some(done) = self.done(deadline, within) {
                return done.unwrap_or_else(|e| panic!("{e}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Its output once it has exited; once `deadline` has passed, killed
    /// and the failure's message; meanwhile nothing.
    fn done(&mut self, deadline: Instant, within: Duration) -> Option<Result<Output, String>> {
        if let Some(output) = self.output() {
            return Some(Ok(output));
        }
        (Instant::now() >= deadline)
            .then(|| Err(self.give_up(&format!("did not exit within {within:?}"))))
    }

    /// Waits until it writes a line to stderr that `wanted` accepts, and
    /// returns that line; fails the test if it exits first, or past
    /// `within`.
    pub async fn stderr_line(&mut self, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            // Before reading: once it has exited, what is read is all.
            let exited = self.output().map(|output| output.status);
            let said = self.stderr.text();
            // Only whole lines: the rest may still be on its way.
            let complete = said.rsplit_once('\n').map_or("", |(lines, _)| lines);
            if let Some(line) = complete.lines().find(|line| wanted(line)) {
                return line.to_owned();
            }
            if let Some(status) = exited {
                self.fail(&format!(
                    "exited ({status}) without the line the test waits for"
                ));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "did not print the line the test waits for within {within:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Its output, once it has exited and every process that held its
    /// pipes (a grandchild, say) has closed them.
    fn output(&mut self) -> Option<Output> {
        let status = self
            .child
            .try_wait()
            .unwrap_or_else(|e| panic!("{}: {e}", self.command))?;
        (self.stdout.closed() && self.stderr.closed()).then(|| Output {
            status,
            stdout: self.stdout.so_far(),
            stderr: self.stderr.so_far(),
        })
    }

    /// Kills it and fails the test with [`Self::give_up`]'s message.
    fn fail(&mut self, what: &str) -> ! {
        panic!("{}", self.give_up(what))
    }

    /// Kills it; its command line, `what` happened and what it printed so
    /// far.
    fn give_up(&mut self, what: &str) -> String {
        self.kill();
        format!(
            "`{}` {what} (killed); it printed so far:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// SIGKILL to its own id (nothing, once it has been waited for), and
    /// waits for it to be gone, which after SIGKILL takes no time.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary to completion with `args`, in an empty environment: for
/// `--help` and for flags it must refuse at start-up. Fails the test past
/// [`RUN_DEADLINE`].
pub fn run(args: &[impl AsRef<OsStr>]) -> Output {
    output_within(Command::new(BINARY).args(args).env_clear(), RUN_DEADLINE)
}

/// Runs the binary with `args` in `env` alone (nothing else from the
/// test's environment) to completion, failing the test if it has not
/// exited `within`: for a tool that talks to a broker (`spool drain`).
pub fn run_within<'a>(
    args: &[&str],
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    within: Duration,
) -> Output {
    output_within(
        Command::new(BINARY).args(args).env_clear().envs(env),
        within,
    )
}

pub struct BridgeProcess {
    child: Child,
    /// Its stdout and stderr, when captured ([`Self::spawn`]).
    output: Option<(Pipe, Pipe)>,
    /// The webhook listener.
    pub addr: SocketAddr,
}

impl BridgeProcess {
    /// Starts the binary with `args`, in an empty environment, with its
    /// output captured for [`Self::stdout_lines`] and [`Self::stderr_lines`].
    pub fn spawn(args: &[&str]) -> Self {
        let mut process = Self::start(args, Stdio::piped);
        let stdout = Pipe::read(process.child.stdout.take());
        let stderr = Pipe::read(process.child.stderr.take());
        process.output = Some((stdout, stderr));
        process
    }

    /// The same, with its output discarded: for long runs whose logs nobody
    /// reads, which would otherwise pile up in the test's memory.
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
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        Self {
            child,
            output: None,
            addr,
        }
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        Self {
            child,
            output: None,
            addr,
        }
    }

    /// [`Self::spawn_with_env`] on free loopback ports for the webhooks and
    /// the metrics, with no drain delay (so a stop takes no time), then
    /// `env`, whose entries win: the process and its metrics address.
    pub fn spawn_on_free_ports<'a>(
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        log: &std::path::Path,
    ) -> (Self, SocketAddr) {
        let free = || -> SocketAddr {
            format!("127.0.0.1:{}", super::free_port())
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (addr, metrics) = (free(), free());
        let (listen, metrics_listen) = (addr.to_string(), metrics.to_string());
        let defaults = [
            ("APIZEE_BRIDGE_LISTEN", listen.as_str()),
            ("APIZEE_BRIDGE_METRICS_LISTEN", metrics_listen.as_str()),
            ("APIZEE_BRIDGE_DRAIN_DELAY", "0s"),
        ];
        let owned = |(k, v): (&str, &str)| (k.to_owned(), v.to_owned());
        let env: Vec<(String, String)> = defaults
            .into_iter()
            .map(owned)
            .chain(env.into_iter().map(owned))
            .collect();
        let env = env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        (Self::spawn_with_env(env, addr, log), metrics)
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

    /// Waits for exit, polling against a deadline; past it, kills the
    /// process and fails with what it printed. Async, so that the test's
    /// own connections are still driven (and closed) meanwhile.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill_9();
                panic!(
                    "the binary did not exit within {READY_DEADLINE:?} (killed){}",
                    self.printed()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every line the process wrote to stderr; call once it has exited.
    pub fn stderr_lines(&mut self) -> Vec<String> {
        self.lines(|(_, stderr)| stderr)
    }

    /// Every line the process wrote to stdout; call once it has exited.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        self.lines(|(stdout, _)| stdout)
    }

    /// The lines of one pipe, once it is closed, which it is as soon as
    /// the process has exited; fails the test if it stays open.
    fn lines(&mut self, pipe: fn(&(Pipe, Pipe)) -> &Pipe) -> Vec<String> {
        let closed = |process: &Self| process.output.as_ref().map(|o| pipe(o).closed());
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match closed(self) {
                None => panic!(
                    "the binary's output was not captured: start it with BridgeProcess::spawn"
                ),
                Some(true) => break,
                Some(false) if Instant::now() >= deadline => {
                    let printed = self.printed();
                    self.kill_9();
                    panic!(
                        "the binary's output did not end within {READY_DEADLINE:?} (killed; \
                         call this once it has exited){printed}"
                    );
                }
                Some(false) => std::thread::sleep(POLL),
            }
        }
        self.output
            .as_ref()
            .map(|o| pipe(o).text().lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// What it printed so far, for a failure message.
    fn printed(&self) -> String {
        self.output
            .as_ref()
            .map_or_else(String::new, |(stdout, stderr)| {
                format!(
                    "; it printed so far:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    stdout.text(),
                    stderr.text()
                )
            })
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}
