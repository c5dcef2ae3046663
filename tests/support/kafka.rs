//! Kafka test support: a `tansu` broker as a child process held by a guard,
//! and a consumer that reads a topic back from the beginning with the bundled
//! librdkafka (Debian's kcat links a librdkafka too old for tansu).

use std::path::PathBuf;
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
            panic!(
                "tansu not found: `cargo install tansu --locked --features dynostore,libsql` \
                 (bash .ci/run does)"
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
        wait_until("tansu to answer metadata requests", async || {
            let bootstrap = bootstrap.clone();
            tokio::task::spawn_blocking(move || broker_answers(&bootstrap))
                .await
                .unwrap_or(false)
        })
        .await;
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "apizee-bridge-tests")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka consumer: {e}"))
}

/// True when a broker answers a metadata request.
pub fn broker_answers(bootstrap: &str) -> bool {
    consumer(bootstrap)
        .fetch_metadata(None, Duration::from_millis(500))
        .is_ok_and(|m| !m.brokers().is_empty())
}

/// Number of partitions of a topic, as the broker reports it.
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let metadata = consumer(bootstrap)
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("metadata for {topic}: {e}"));
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len())
}

/// Reads `topic` from the beginning of every partition until `count`
/// messages have arrived, then keeps reading briefly to catch extras (which
/// the caller's assertions would then see). Blocking: call it from
/// `spawn_blocking` or a plain test.
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
    let deadline = Instant::now() + READY_DEADLINE;
    let mut messages = Vec::new();
    let mut extra_deadline = None;
    loop {
        let now = Instant::now();
        if now > deadline || extra_deadline.is_some_and(|d| now > d) {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => messages.push(message.detach()),
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
