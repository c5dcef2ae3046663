//! The spool under load through a broker outage, on real brokers: every
//! webhook answered 200 or 202 reaches the broker once, and each objectId's
//! webhooks reach it in the order they were sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::process::BridgeProcess;
use crate::support::*;
use bytes::Bytes;

/// Senders, each posting its own objectIds' webhooks in turn, one at a
/// time, as the platform does.
const SENDERS: u32 = 8;
const OBJECTS_PER_SENDER: u32 = 4;

/// What the senders were told, counted as they go.
#[derive(Default)]
struct Answers {
    ok: AtomicU64,
    spooled: AtomicU64,
    other: AtomicU64,
}

/// The load: senders that post until stopped, and what they were told.
struct Load {
    answers: Arc<Answers>,
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<Vec<(u32, u32)>>>,
}

fn ticket(object: u32, time: u32) -> String {
    format!(
        r#"{{"event":"update","time":{time},"object":"ticket","objectId":{object},"props":{{}}}}"#
    )
}

impl Load {
    fn start(bridge: &BridgeProcess) -> Self {
        let answers = Arc::new(Answers::default());
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..SENDERS)
            .map(|sender| {
                let (addr, answers, stop) = (bridge.addr, answers.clone(), stop.clone());
                tokio::spawn(async move {
                    // (objectId, time) of every webhook answered 2xx.
                    let mut acknowledged = Vec::new();
                    let mut time = 0;
                    while !stop.load(Ordering::SeqCst) {
                        time += 1;
                        for n in 0..OBJECTS_PER_SENDER {
                            let object = sender * OBJECTS_PER_SENDER + n;
                            let reply = request(
                                addr,
                                "POST",
                                "/webhooks",
                                &[("content-type", "application/json")],
                                Bytes::from(ticket(object, time)),
                            )
                            .await;
                            let counter = match reply.as_ref().map(|r| r.status) {
                                Ok(200) => &answers.ok,
                                Ok(202) => &answers.spooled,
                                _ => &answers.other,
                            };
                            counter.fetch_add(1, Ordering::SeqCst);
                            match reply {
                                Ok(reply) if reply.status == 200 || reply.status == 202 => {
                                    acknowledged.push((object, time));
                                }
                                Ok(reply) => panic!("{}: {}", reply.status, reply.text()),
                                Err(e) => panic!("socket error: {e}"),
                            }
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        Self {
            answers,
            stop,
            senders,
        }
    }

    fn ok(&self) -> u64 {
        self.answers.ok.load(Ordering::SeqCst)
    }

    fn spooled(&self) -> u64 {
        self.answers.spooled.load(Ordering::SeqCst)
    }

    /// Waits until `count` more answers of one kind have come.
    async fn until(&self, what: &str, count: u64, answered: fn(&Self) -> u64) {
        let target = answered(self) + count;
        wait_until(what, async || answered(self) >= target).await;
    }

    /// Before the outage: the broker takes webhooks live (200).
    async fn live(&self) {
        self.until("200s before the outage", 200, Load::ok).await;
    }

    /// During the outage: webhooks are spooled (202).
    async fn spooling(&self) {
        self.until("202s during the outage", 200, Load::spooled)
            .await;
    }

    /// After the outage, back to 200s (webhooks of objectIds still in the
    /// spool queue behind it, every other one goes straight to the broker),
    /// then stops the senders; every webhook answered 2xx, by objectId, in
    /// the order sent.
    async fn back_live(self) -> BTreeMap<u32, Vec<u32>> {
        self.until("200s after the outage", 400, Load::ok).await;
        let sent = self.finish().await;
        assert_eq!(sent.len(), (SENDERS * OBJECTS_PER_SENDER) as usize);
        sent
    }

    async fn finish(self) -> BTreeMap<u32, Vec<u32>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut sent: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for sender in self.senders {
            let acknowledged = tokio::time::timeout(Duration::from_secs(30), sender)
                .await
                .unwrap_or_else(|_| panic!("a sender did not stop"))
                .unwrap_or_else(|e| panic!("{e}"));
            for (object, time) in acknowledged {
                sent.entry(object).or_default().push(time);
            }
        }
        assert_eq!(self.answers.other.load(Ordering::SeqCst), 0);
        sent
    }
}

/// (objectId, time) of a stored webhook, from its exact bytes.
fn parse(payload: &[u8]) -> (u32, u32) {
    let body: serde_json::Value = serde_json::from_slice(payload).unwrap_or_else(|e| panic!("{e}"));
    let field = |name: &str| {
        body[name]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_else(|| panic!("{name} in {body}"))
    };
    (field("objectId"), field("time"))
}

/// Copies of one webhook the broker may hold.
#[derive(Clone, Copy)]
enum Copies {
    /// Exactly one: JetStream drops a second publish of an event id
    /// (`Nats-Msg-Id`) within its duplicate window.
    One,
    /// At least one: a Kafka publish that timed out after the broker had
    /// written it is sent again (from the spool, or by the sender after a
    /// 503), with the same event id; consumers deduplicate on it. Printed.
    AtLeastOne,
}

/// Compares what the broker holds, in its order, with what the senders
/// were told: none missing, each objectId's in the order sent (a
/// duplicate's first copy counts), and `copies`. Returns how many are
/// missing, so a caller can wait for the replay.
fn compare(
    broker: &str,
    sent: &BTreeMap<u32, Vec<u32>>,
    stored: &[(u32, u32)],
    copies: Copies,
) -> usize {
    let mut found: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(object, time) in stored {
        found.entry(object).or_default().push(time);
    }
    let mut missing = 0;
    let mut duplicates = 0;
    for (object, times) in sent {
        let held = found.get(object).cloned().unwrap_or_default();
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for time in &held {
            *seen.entry(*time).or_default() += 1;
        }
        missing += times.iter().filter(|t| !seen.contains_key(t)).count();
        duplicates += seen.values().map(|n| n - 1).sum::<usize>();
        // As a consumer that drops copies of an event id sees them.
        let mut kept = std::collections::HashSet::new();
        let first: Vec<u32> = held.iter().copied().filter(|t| kept.insert(*t)).collect();
        let in_order = first.windows(2).all(|pair| pair[0] < pair[1]);
        assert!(
            in_order,
            "{broker}: objectId {object} out of order: {held:?}"
        );
    }
    println!(
        "spool outage {broker}: acknowledged={} stored={} missing={missing} duplicates={duplicates}",
        sent.values().map(Vec::len).sum::<usize>(),
        stored.len()
    );
    if let Copies::One = copies {
        assert_eq!(duplicates, 0, "{broker}: webhooks stored twice");
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_spooled_under_load_reach_jetstream_once_and_in_order() {
    let mut nats = crate::support::nats::NatsServer::start(true).await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().to_string_lossy().into_owned();
    let bridge = BridgeProcess::spawn_quiet(&[
        "--sink",
        "nats",
        "--nats-url",
        url.as_str(),
        "--nats-jetstream",
        "--nats-stream",
        "WEBHOOKS",
        "--publish-timeout",
        "500ms",
        "--spool-dir",
        spool.as_str(),
    ]);
    bridge.wait_ready().await;
    let load = Load::start(&bridge);
    load.live().await;
    nats.kill();
    load.spooling().await;
    nats.restart().await;
    let sent = load.back_live().await;
    let js = async_nats::jetstream::new(nats.client().await);
    wait_until("every acknowledged webhook in the stream", async || {
        let stored: Vec<(u32, u32)> = crate::support::nats::stream_contents(&js, "WEBHOOKS")
            .await
            .iter()
            .map(|(_, payload)| parse(payload))
            .collect();
        compare("nats", &sent, &stored, Copies::One) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_spooled_under_load_reach_kafka_once_and_in_order() {
    use crate::support::kafka::{KafkaCluster, high_watermarks, read_topic};

    let mut broker = KafkaCluster::single().await;
    let bootstrap = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().to_string_lossy().into_owned();
    let bridge = BridgeProcess::spawn_quiet(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        bootstrap.as_str(),
        "--kafka-create-topics",
        "--kafka-partitions",
        "3",
        "--kafka-replication-factor",
        "1",
        "--publish-timeout",
        "500ms",
        "--spool-dir",
        spool.as_str(),
    ]);
    bridge.wait_ready().await;
    let load = Load::start(&bridge);
    load.live().await;
    broker.nodes[0].kill();
    load.spooling().await;
    broker.nodes[0].restart().await;
    let sent = load.back_live().await;
    let acknowledged: usize = sent.values().map(Vec::len).sum();
    let topic = "apizee.ticket.update";
    wait_until("every acknowledged webhook in the topic", async || {
        let (bootstrap, held) = (bootstrap.clone(), acknowledged);
        let stored = tokio::task::spawn_blocking(move || {
            let count: i64 = high_watermarks(&bootstrap, topic).values().sum();
            (count >= held as i64).then(|| read_topic(&bootstrap, topic, held))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        match stored {
            Some(messages) => {
                let stored: Vec<(u32, u32)> = messages
                    .iter()
                    .map(|m| parse(rdkafka::Message::payload(m).unwrap_or_default()))
                    .collect();
                compare("kafka", &sent, &stored, Copies::AtLeastOne) == 0
            }
            None => false,
        }
    })
    .await;
}
