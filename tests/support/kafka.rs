//! Kafka test support: Apache Kafka nodes (KRaft, each broker and
//! controller) as child processes run by `.ci/tools/kafka/node.sh`, one or
//! a cluster of several on loopback, held by a guard that kills them by
//! their own ids; one broker a whole test binary shares ([`shared`]); and a
//! consumer that reads topics back up to their high watermarks.
//!
//! The jars come from `bash .ci/tools/kafka.sh`, which installs every
//! release in `.ci/tools/kafka/releases` under `target/tools/kafka/`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::{READY_DEADLINE, free_port};

/// The project's root, where `.ci/` and `target/tools/` are.
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The pins: one line per release, `name version log4j2-version`.
const RELEASES: &str = include_str!("../../.ci/tools/kafka/releases");

/// How long a node (or every node of a cluster) may take to open its
/// broker port: a JVM formats the storage, another starts the broker, and
/// three of them on 2 busy cores take several times the 3 s one takes
/// alone. A deadline, not a wait: readiness is polled.
const START_DEADLINE: Duration = Duration::from_secs(120);

/// An Apache Kafka release the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaRelease {
    /// The newest 4.x release, which every Kafka test runs against.
    Current,
    /// The oldest release the bridge supports, for the end-to-end basics.
    Oldest,
}

impl KafkaRelease {
    pub fn name(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Oldest => "oldest",
        }
    }

    /// The Kafka version, from `.ci/tools/kafka/releases`.
    pub fn version(self) -> &'static str {
        RELEASES
            .lines()
            .map(str::split_whitespace)
            .find_map(|mut fields| {
                (fields.next() == Some(self.name()))
                    .then(|| fields.next())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no {} release in .ci/tools/kafka/releases", self.name()))
    }

    /// The folder of the release's jars; a missing one fails the test with
    /// the command that installs it. `$KAFKA_LIBS` (a Kafka tarball's
    /// `libs/`, say) replaces the current release's.
    fn libs(self) -> PathBuf {
        if self == Self::Current
            && let Some(libs) = std::env::var_os("KAFKA_LIBS")
        {
            return libs.into();
        }
        let libs = Path::new(ROOT)
            .join("target/tools/kafka")
            .join(self.version())
            .join("libs");
        if !libs.join(".installed").is_file() {
            super::missing_tool(format!(
                "Apache Kafka {} is not installed in {}: run `bash .ci/tools/kafka.sh` (bash \
                 .ci/test does)",
                self.version(),
                libs.display()
            ));
        }
        libs
    }
}

/// Spawns `command` from one thread that lives as long as the test process,
/// with `PR_SET_PDEATHSIG` set to SIGKILL: the kernel kills the node when
/// that thread ends, which is when the process ends, even when it dies
/// without running any destructor (a test binary killed by a timeout, or a
/// broker kept in a `static`, which is never dropped). Spawned from a test's
/// own thread, the node would die with that thread instead.
fn spawn_tied(command: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kafka-spawner".into())
            .spawn(move || {
                for (mut command, reply) in queue {
                    use std::os::unix::process::CommandExt as _;
                    // SAFETY: prctl is async-signal-safe, and only it runs
                    // between fork and exec.
                    unsafe {
                        command.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                                return Err(io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
                // The sender sits in a static: the queue never closes, and
                // this thread, hence its children, lives until the process
                // exits.
            })
            .unwrap_or_else(|e| panic!("cannot start the Kafka spawner thread: {e}"));
        Mutex::new(jobs)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .map_err(|_| io::Error::other("the Kafka spawner thread is gone"))?;
    // A spawn takes milliseconds; a spawner that never answers fails the
    // test rather than hanging it.
    answer
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| io::Error::other(format!("the Kafka spawner thread did not answer: {e}")))?
}

/// What every node of one cluster is started with.
#[derive(Clone)]
struct Launch {
    libs: PathBuf,
    cluster_id: String,
    voters: String,
    /// `KEY=VALUE` lines appended to each node's server.properties.
    settings: Vec<String>,
}

/// One node of a cluster (its broker and controller in one process), with
/// its data in its own folder, which outlives [`KafkaNode::kill`], so that
/// [`KafkaNode::restart`] brings the same node back.
pub struct KafkaNode {
    pub id: u32,
    pub broker_port: u16,
    pub controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    launch: Launch,
}

impl KafkaNode {
    /// This node's broker address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.broker_port)
    }

    /// The running node's process id, for [`super::send_signal`] and
    /// [`super::Frozen`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.display()));
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("output.log"))
            .unwrap_or_else(|e| panic!("output.log: {e}"));
        let errors = output
            .try_clone()
            .unwrap_or_else(|e| panic!("output.log: {e}"));
        let mut command = Command::new("bash");
        command
            .arg(Path::new(ROOT).join(".ci/tools/kafka/node.sh"))
            .arg(&self.dir)
            .arg(self.id.to_string())
            .arg(self.broker_port.to_string())
            .arg(self.controller_port.to_string())
            .arg(&self.launch.voters)
            .args(&self.launch.settings)
            .env("KAFKA_LIBS", &self.launch.libs)
            .env("KAFKA_CLUSTER_ID", &self.launch.cluster_id)
            .stdin(Stdio::null())
            // A pipe nobody reads would stall the JVM once full.
            .stdout(output)
            .stderr(errors);
        let child = spawn_tied(command)
            .unwrap_or_else(|e| panic!("cannot start Kafka node {}: {e}", self.id));
        self.child = Some(child);
    }

    /// Kills the node with SIGKILL (nothing flushed, no controlled
    /// shutdown) and waits until it is gone. Its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed node again on the same ports and data, and waits
    /// until its broker port is open (the broker has caught up with the
    /// cluster's metadata and is unfenced).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_listening().await;
    }

    /// Polls the broker port: Kafka opens it only once the broker is
    /// unfenced and has caught up with the metadata (`SocketServer` defers
    /// it so that an open port means ready). Fails at once, with the node's
    /// log, if the process exits.
    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "Kafka node {} exited while starting ({status}); its log:\n{}",
                    self.id,
                    self.log_tail(40)
                );
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.broker_port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Kafka node {} did not open its broker port within {START_DEADLINE:?}; its log:\n{}",
                self.id,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines the node logged (server.log), and whatever its
    /// JVM printed (a crash, a format error).
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "--- logs/server.log ---\n{}\n--- output ---\n{}",
            tail("logs/server.log"),
            tail("output.log")
        )
    }

    /// The KRaft leader (the active controller) and its epoch, as this
    /// node last recorded them in its `quorum-state` file.
    fn quorum_leader(&self) -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(self.dir.join("data/__cluster_metadata-0/quorum-state"))
            .ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        let leader = u32::try_from(state["leaderId"].as_i64()?).ok()?;
        Some((leader, state["leaderEpoch"].as_u64()?))
    }
}

/// Kafka nodes on loopback, each broker and controller, with a static
/// quorum of all of them. Killed (SIGKILL) and their folders removed when
/// dropped; a failing test first gets each node's last log lines.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
    pub release: KafkaRelease,
    dir: tempfile::TempDir,
}

impl KafkaCluster {
    /// One broker of the newest release: for a test that kills, stops or
    /// restarts it (the others share [`shared`]).
    pub async fn single() -> Self {
        Self::start(1, KafkaRelease::Current).await
    }

    /// `size` nodes of `release`. With more than one, topics get 3 replicas
    /// and need 2 in sync by default, and unclean leader election is off:
    /// what a production cluster runs.
    pub async fn start(size: u32, release: KafkaRelease) -> Self {
        let settings: Vec<String> = if size > 1 {
            let replicas = size.min(3);
            let in_sync = replicas.min(2);
            vec![
                format!("default.replication.factor={replicas}"),
                format!("min.insync.replicas={in_sync}"),
                "unclean.leader.election.enable=false".into(),
                format!("offsets.topic.replication.factor={replicas}"),
                format!("transaction.state.log.replication.factor={replicas}"),
                format!("transaction.state.log.min.isr={in_sync}"),
                format!("share.coordinator.state.topic.replication.factor={replicas}"),
                format!("share.coordinator.state.topic.min.isr={in_sync}"),
                // A silent broker is fenced after 4 s instead of 9 s (the
                // heartbeat must be at most half of it).
                "broker.heartbeat.interval.ms=1000".into(),
                "broker.session.timeout.ms=4000".into(),
                // Leaders stay where a fault put them, rather than moving
                // back to the preferred replica during a case.
                "auto.leader.rebalance.enable=false".into(),
            ]
        } else {
            Vec::new()
        };
        Self::start_with(size, release, &settings).await
    }

    /// `size` nodes of `release` with `settings` (`KEY=VALUE`) added to
    /// each node's server.properties.
    pub async fn start_with(size: u32, release: KafkaRelease, settings: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .zip(1..)
            .map(|((_, controller), id)| format!("{id}@127.0.0.1:{controller}"))
            .collect::<Vec<_>>()
            .join(",");
        let launch = Launch {
            libs: release.libs(),
            cluster_id: cluster_id(),
            voters,
            settings: settings.to_vec(),
        };
        let nodes = ports
            .into_iter()
            .zip(1..)
            .map(|((broker_port, controller_port), id)| KafkaNode {
                id,
                broker_port,
                controller_port,
                dir: dir.path().join(format!("node-{id}")),
                child: None,
                launch: launch.clone(),
            })
            .collect();
        let mut cluster = Self {
            nodes,
            release,
            dir,
        };
        // All at once: a node alone cannot elect a controller, and its
        // broker waits for one before it opens its port.
        for node in &mut cluster.nodes {
            node.spawn();
        }
        for node in &mut cluster.nodes {
            node.wait_listening().await;
        }
        cluster.wait_brokers(size as usize).await;
        cluster
    }

    /// Every node's broker address, comma-separated, as `--kafka-brokers`
    /// takes them.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaNode::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process id of the first node: a single broker's.
    pub fn pid(&self) -> Option<u32> {
        self.nodes.first().and_then(KafkaNode::pid)
    }

    /// The index in [`Self::nodes`] of the node with this id.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.nodes.iter().position(|node| node.id == id)
    }

    /// Waits until the cluster's metadata lists `count` live brokers.
    pub async fn wait_brokers(&self, count: usize) {
        let bootstrap = self.bootstrap();
        super::wait_until(
            &format!("{count} Kafka brokers in the metadata"),
            async || {
                let bootstrap = bootstrap.clone();
                tokio::task::spawn_blocking(move || {
                    consumer(&bootstrap)
                        .fetch_metadata(None, Duration::from_secs(2))
                        .is_ok_and(|m| m.brokers().len() == count)
                })
                .await
                .unwrap_or(false)
            },
        )
        .await;
    }

    /// The index of the node leading `topic`'s `partition`, as the
    /// cluster's metadata says. Blocking.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<usize> {
        let metadata = consumer(&self.bootstrap())
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()?;
        let leader = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)?
            .partitions()
            .iter()
            .find(|p| p.id() == partition)?
            .leader();
        self.index_of(u32::try_from(leader).ok()?)
    }

    /// The index of the active KRaft controller: the quorum leader of the
    /// newest epoch any running node has recorded.
    pub fn active_controller(&mut self) -> Option<usize> {
        let leader = self
            .nodes
            .iter_mut()
            .filter_map(|node| {
                if node.is_running() {
                    node.quorum_leader()
                } else {
                    None
                }
            })
            .max_by_key(|&(_, epoch)| epoch)?
            .0;
        self.index_of(leader)
    }

    /// The folder holding each node's data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        // A failing test unwinds through here: show what each node last
        // logged, which the assertion cannot.
        if std::thread::panicking() {
            for node in &mut self.nodes {
                let state = if node.is_running() {
                    "running"
                } else {
                    "not running"
                };
                eprintln!(
                    "Kafka node {} (port {}, {state}), last lines:\n{}",
                    node.id,
                    node.broker_port,
                    node.log_tail(30)
                );
            }
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// A cluster id as Kafka makes them: 16 random bytes in base64url without
/// padding. Without `-` and `_`: an id starting with `-` reads as a flag.
fn cluster_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(bytes)
        .replace(['+', '/'], "A")
}

/// One broker of the newest release for every test of this test binary
/// that does not hurt it: each test keeps to topics of its own
/// (`--topic-prefix`), so the binary pays for one JVM start, not one per
/// test. Started by the first test that asks; a `static` is never dropped,
/// so the broker dies with the process ([`spawn_tied`]) and its folder is
/// removed at exit.
pub async fn shared() -> &'static KafkaCluster {
    shared_release(KafkaRelease::Current).await
}

/// The same for any release: one broker of each per test binary.
pub async fn shared_release(release: KafkaRelease) -> &'static KafkaCluster {
    type Shared = tokio::sync::OnceCell<KafkaCluster>;
    static CURRENT: Shared = Shared::const_new();
    static OLDEST: Shared = Shared::const_new();
    static CLEANUP: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_shared() {
        for cluster in [CURRENT.get(), OLDEST.get()].into_iter().flatten() {
            if let Some(pid) = cluster.pid() {
                let _ = super::send_signal(pid, "KILL");
            }
            let _ = std::fs::remove_dir_all(cluster.dir());
        }
    }
    let cell = match release {
        KafkaRelease::Current => &CURRENT,
        KafkaRelease::Oldest => &OLDEST,
    };
    cell.get_or_init(async || {
        // SAFETY: registers, once, a plain function that runs at exit.
        CLEANUP.call_once(|| unsafe {
            libc::atexit(remove_shared);
        });
        KafkaCluster::start(1, release).await
    })
    .await
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "apizee-bridge-tests")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka consumer: {e}"))
}

/// Number of partitions of a topic, as the broker reports it, once it
/// reports the topic without an error. Retries until [`READY_DEADLINE`]: a
/// topic just created, or a broker just restarted, has no leader for a
/// moment (`LeaderNotAvailable`). 0 if the topic is still not there then.
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let consumer = consumer(bootstrap);
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let found = match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| match t.error() {
                    None => Ok(t.partitions().len()),
                    Some(e) => Err(format!("{:?}", rdkafka::error::RDKafkaErrorCode::from(e))),
                })
                .unwrap_or_else(|| Err("not in the metadata".to_owned())),
            Err(e) => Err(e.to_string()),
        };
        match found {
            Ok(partitions) if partitions > 0 => return partitions,
            Ok(_) => {}
            Err(e) if Instant::now() < deadline => eprintln!("metadata for {topic}: {e}; retrying"),
            Err(_) => return 0,
        }
        if Instant::now() >= deadline {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `(low, high)` watermarks of one partition, retried until
/// [`READY_DEADLINE`]: right after a topic is created or a leader moves,
/// the broker asked may answer `NotLeaderForPartition` for a moment.
fn watermarks(consumer: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok(marks) => return marks,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic}/{partition}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("watermarks of {topic}/{partition}, still failing: {e}"),
        }
    }
}

/// The high watermark of every partition of `topic`: partition -> the
/// offset one past its last message. On Kafka a message acknowledged with
/// `acks=all` is below the high watermark by the time its producer hears
/// so.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = consumer(bootstrap);
    let partitions = partition_count(bootstrap, topic);
    assert!(partitions > 0, "topic {topic} has no partitions");
    (0..partitions as i32)
        .map(|partition| (partition, watermarks(&consumer, topic, partition).1))
        .collect()
}

/// Waits until `topic` holds at least `count` messages, then reads all of
/// it, up to the high watermarks ([`read_all`]): a message published twice,
/// or one that should not be there, is in what comes back. For messages
/// published in the background (dead letters), whose arrival the caller
/// cannot see. Fails once [`READY_DEADLINE`] passes with fewer. Blocking.
pub fn read_topic(bootstrap: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let marks = wait_for_messages(bootstrap, topic, count);
    let held: i64 = marks.values().sum();
    assert!(
        held >= count as i64,
        "{topic} holds {held} messages after {READY_DEADLINE:?}, expected at least {count}"
    );
    read_all(bootstrap, topic)
}

/// Waits until `topic` holds at least `count` messages (the sum of its
/// high watermarks), or [`READY_DEADLINE`] passes, and returns the high
/// watermarks last seen, whether or not they reached `count`: for a caller
/// that then reads the topic ([`read_all`]) to name the messages missing
/// rather than count them. Blocking.
pub fn wait_for_messages(bootstrap: &str, topic: &str, count: usize) -> BTreeMap<i32, i64> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let marks = high_watermarks(bootstrap, topic);
        let held: i64 = marks.values().sum();
        if held >= count as i64 || Instant::now() >= deadline {
            return marks;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

pub fn key(message: &OwnedMessage) -> &str {
    message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or_default()
}

/// Reads every partition of `topic` from the beginning up to the high
/// watermark it had when the call began, with a fresh consumer: all that
/// the topic held then, nothing guessed from a count. Panics if no message
/// arrives for [`READY_DEADLINE`] while some are still missing: a busy
/// machine slows the broker down, so the time allowed grows with progress.
/// Blocking.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer = consumer(bootstrap);
    // Partition -> the offset one past the last message to read.
    let mut pending = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for (partition, high) in high_watermarks(bootstrap, topic) {
        let (low, _) = watermarks(&consumer, topic, partition);
        if high > low {
            pending.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut messages = Vec::new();
    if pending.is_empty() {
        return messages;
    }
    consumer
        .assign(&assignment)
        .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        assert!(
            last_progress.elapsed() < READY_DEADLINE,
            "reading {topic}: nothing new for {READY_DEADLINE:?}, {} messages read and \
             partitions {pending:?} (partition -> high watermark) not read to the end",
            messages.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let (partition, offset) = (message.partition(), message.offset());
                if pending.get(&partition).is_some_and(|high| offset < *high) {
                    messages.push(message.detach());
                }
                if pending
                    .get(&partition)
                    .is_some_and(|high| offset + 1 >= *high)
                {
                    pending.remove(&partition);
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    messages
}

/// Creates `topics` as an operator would before starting the bridge (the
/// brokers do not create topics on demand), with `replicas` replicas each,
/// and waits until their metadata shows them.
pub async fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32, replicas: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka admin client: {e}"));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replicas)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .unwrap_or_else(|e| panic!("create topics {topics:?}: {e}"));
    for result in results {
        if let Err((topic, code)) = result {
            panic!("create topic {topic}: {code}");
        }
    }
    for topic in topics {
        let bootstrap = bootstrap.to_owned();
        let topic = (*topic).to_owned();
        super::wait_until(&format!("{topic} in the metadata"), async || {
            let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
            tokio::task::spawn_blocking(move || partition_count(&bootstrap, &topic))
                .await
                .unwrap_or(0)
                == partitions as usize
        })
        .await;
    }
}
