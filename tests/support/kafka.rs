//! Kafka test support: a `tansu` broker as a child process held by a guard,
//! and a consumer that reads a topic back from the beginning with the bundled
//! librdkafka (Debian's kcat links a librdkafka too old for tansu).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::{READY_DEADLINE, free_port, wait_until};

pub fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return path.into();
    }
    let mut dirs: Vec<PathBuf> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .collect();
    if let Ok(home) = std::env::var("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            super::missing_tool(
                "tansu not found: `cargo install tansu --locked --version 0.6.0 --features \
                 dynostore,libsql` (bash .ci/test does)",
            )
        })
}

/// A tansu Kafka-protocol broker on a free loopback port, storing in memory.
/// Killed when dropped.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
}

impl Tansu {
    pub async fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        let broker = Self {
            child: Some(child),
            port,
        };
        let bootstrap = broker.bootstrap();
        wait_for_metadata("tansu to answer metadata requests", bootstrap).await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id, for [`super::send_signal`] and [`super::Frozen`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tansu broker storing in a SQLite file in its own temporary directory,
/// which keeps topics and records across restarts: [`DurableTansu::kill`]
/// (SIGKILL) and [`DurableTansu::restart`] on the same port and file. Topics
/// must be created explicitly (auto-created ones are not kept). Its output
/// goes to `tansu.log` in the same directory, read with
/// [`DurableTansu::log`]. Killed when dropped.
pub struct DurableTansu {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl DurableTansu {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut broker = Self {
            child: None,
            port: free_port(),
            dir,
        };
        broker.spawn().await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding the database (`tansu.db`, with its WAL) and
    /// the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the broker printed, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap_or_else(|e| panic!("tansu.log: {e}"));
        let log_err = log.try_clone().unwrap_or_else(|e| panic!("tansu.log: {e}"));
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // tansu reads `sqlite://` paths relative to its working directory.
        let child = Command::new(tansu_binary())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        self.child = Some(child);
        let bootstrap = self.bootstrap();
        wait_for_metadata("tansu (sqlite) to answer metadata requests", bootstrap).await;
    }

    /// Kills the broker with SIGKILL (no chance to flush anything) and waits
    /// for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker if it runs, then starts it again on the same port
    /// and database and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for DurableTansu {
    fn drop(&mut self) {
        // A failing test unwinds through here: say whether the broker was
        // still alive and what it last printed, which the assertion cannot.
        if std::thread::panicking() {
            let state = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => format!("had exited ({status})"),
                Some(Ok(None)) => "was running".to_owned(),
                Some(Err(e)) => format!("was in an unknown state ({e})"),
                None => "was not running (killed by the test)".to_owned(),
            };
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "tansu (sqlite) on port {} {state}; its log, last lines first:\n{}",
                self.port,
                tail.join("\n")
            );
        }
        self.kill();
    }
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

/// Polls until a broker at `bootstrap` answers a metadata request.
async fn wait_for_metadata(what: &str, bootstrap: String) {
    wait_until(what, async || {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || broker_answers(&bootstrap))
            .await
            .unwrap_or(false)
    })
    .await;
}

/// True when a broker answers a metadata request.
pub fn broker_answers(bootstrap: &str) -> bool {
    consumer(bootstrap)
        .fetch_metadata(None, Duration::from_millis(500))
        .is_ok_and(|m| !m.brokers().is_empty())
}

/// Number of partitions of a topic, as the broker reports it.
/// Retries until [`READY_DEADLINE`]: a broker just restarted, or slowed by
/// a busy machine, may drop the first requests.
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let consumer = consumer(bootstrap);
    let deadline = Instant::now() + READY_DEADLINE;
    let metadata = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => break metadata,
            Err(e) if Instant::now() < deadline => {
                eprintln!("metadata for {topic}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("metadata for {topic}, still failing after {READY_DEADLINE:?}: {e}"),
        }
    };
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len())
}

/// Reads `topic` from the beginning of every partition until `count`
/// messages have arrived, then keeps reading briefly to catch extras (which
/// the caller's assertions would then see). Gives up when nothing new has
/// come for [`READY_DEADLINE`], so a long topic on a slow machine is read
/// to the end. Blocking: call it from `spawn_blocking` or a plain test.
pub fn read_topic(bootstrap: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer = consumer(bootstrap);
    let partitions = partition_count(bootstrap, topic);
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Beginning)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    consumer
        .assign(&assignment)
        .unwrap_or_else(|e| panic!("assign {topic}: {e}"));
    let mut deadline = Instant::now() + READY_DEADLINE;
    let mut messages = Vec::new();
    let mut extra_deadline = None;
    loop {
        let now = Instant::now();
        if now > deadline || extra_deadline.is_some_and(|d| now > d) {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                messages.push(message.detach());
                deadline = Instant::now() + READY_DEADLINE;
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        if messages.len() >= count && extra_deadline.is_none() {
            // Anything published twice would sit right behind: look for it.
            extra_deadline = Some(Instant::now() + Duration::from_millis(500));
        }
    }
    messages
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
/// watermark it had when the call began, so nothing is guessed from a
/// count. Seen with tansu 0.6: right after a burst of produces, the
/// watermark it reports can lag the last message or two it acknowledged
/// (a later read by count finds them), so a check that every acknowledged
/// message is there should read by count ([`read_topic`]). Panics if no message arrives
/// for [`READY_DEADLINE`] while some are still missing: a busy machine slows
/// the broker down, so the time allowed grows with progress. Blocking.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer = consumer(bootstrap);
    let partitions = partition_count(bootstrap, topic);
    assert!(partitions > 0, "topic {topic} has no partitions");
    // Partition -> the offset one past the last message to read.
    let mut pending = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
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

/// Creates `topics` as an operator would before starting the bridge, for
/// brokers that do not create topics on demand (tansu never does); waits
/// until their metadata shows them.
pub async fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka admin client: {e}"));
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
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
        let found = tokio::task::spawn_blocking(move || partition_count(&bootstrap, &topic))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found, partitions as usize);
    }
}
